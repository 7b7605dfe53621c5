/**
 * The backup's disk reader (apps/host-agent/src/backup/chain-thread.ts): a chain of a raw base
 * and qcow2 layers made by qemu-img and written by qemu-io (as a VM's writes would be), read in
 * a worker thread. Which 1 MiB chunks the layers above a mark touch (the incremental backup's
 * read list), reads equal to what qemu-img reads, and layers with hostile tables refused with
 * their reason, the thread still answering after.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, copyFileSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WarrenError } from '@warren/protocol';
import { ChainThread } from '../../apps/host-agent/src/backup/chain-thread.ts';

const MiB = 1024 * 1024;
const dir = await mkdtemp(join(tmpdir(), 'wt-backup-chain-'));
after(() => rm(dir, { recursive: true, force: true }));

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function writeAt(file: string, offset: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** A new qcow2 layer over `below` (format `fmt`) of `size` bytes, with qemu-io writes. */
function layer(name: string, below: string, fmt: 'raw' | 'qcow2', size: number, writes: string[]): string {
  const path = join(dir, name);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', fmt, '-b', below, path, String(size)]);
  for (const w of writes) sh('qemu-io', ['-f', 'qcow2', '-c', w, path]);
  return path;
}

const SIZE = 16 * MiB;
const base = join(dir, 'base.img');
let l1 = '';
let l2 = '';

before(() => {
  // The base has bytes everywhere, so a layer's chunks read differently from it.
  const bytes = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i += 4096) bytes.writeUInt32BE(i / 4096, i);
  writeFileSync(base, bytes);
  // Chunk 3; chunks 4 and 5 (a write across their boundary); chunk 9 zeroed (a zero cluster).
  l1 = layer('l1.qcow2', base, 'raw', SIZE, [
    'write -P 0xaa 3M 64k',
    `write -P 0xbb ${5 * MiB - 4096} 8k`,
    'write -z 9M 64k',
  ]);
  // Above the mark: only chunk 12, and chunk 3 again.
  l2 = layer('l2.qcow2', l1, 'qcow2', SIZE, ['write -P 0xcc 12M 4k', 'write -P 0xdd 3M 4k']);
});

describe('allocated chunks and reads', () => {
  test('chunks held by the layers above a mark, and by all layers', async () => {
    const t = await ChainThread.open({ base, baseFormat: 'raw', layers: [l1, l2] });
    try {
      assert.equal(t.size, SIZE);
      assert.equal(t.layers, 2);
      assert.deepEqual(await t.allocatedChunks(1, MiB), [3, 12]);
      assert.deepEqual(await t.allocatedChunks(0, MiB), [3, 4, 5, 9, 12]);
      assert.deepEqual(await t.allocatedChunks(2, MiB), []);
    } finally {
      await t.close();
    }
  });

  test('every chunk reads as qemu-img reads the chain', async () => {
    const flat = join(dir, 'flat.raw');
    sh('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', l2, flat]);
    const expected = readFileSync(flat);
    const t = await ChainThread.open({ base, baseFormat: 'raw', layers: [l1, l2] });
    try {
      for (let i = 0; i < SIZE / MiB; i++) {
        const got = await t.read(i * MiB, MiB);
        assert.ok(got.equals(expected.subarray(i * MiB, (i + 1) * MiB)), `chunk ${i}`);
      }
      // A short read at the end, from the pool of small buffers.
      assert.ok((await t.read(SIZE - 100, 100)).equals(expected.subarray(SIZE - 100)));
    } finally {
      await t.close();
    }
  });
});

describe('hostile layers', () => {
  /** A layer whose header fields `patch` rewrites; the thread must refuse it with `reason`, and go on answering. */
  async function refused(name: string, patch: (file: string, header: Buffer) => void, reason: RegExp) {
    const bad = join(dir, name);
    copyFileSync(l1, bad);
    patch(bad, readFileSync(bad).subarray(0, 112));
    const chain = { base, baseFormat: 'raw' as const, layers: [bad] };
    let t: ChainThread | undefined;
    try {
      t = await ChainThread.open(chain);
      await t.allocatedChunks(0, MiB);
      assert.fail(`${name} was not refused`);
    } catch (e) {
      assert.ok(e instanceof WarrenError, String(e));
      assert.match(e.message, reason);
      // A refused walk is an answer, not a dead thread: asked again, it answers the same.
      if (t) await assert.rejects(t.allocatedChunks(0, MiB), reason);
    } finally {
      await t?.close();
    }
  }

  test('an L1 table outside the file', () =>
    refused(
      'l1-outside.qcow2',
      (f) => writeAt(f, 40, u64(1n << 40n)),
      /L1 table offset .* outside the file/,
    ));

  test('every L1 entry naming the same L2 table (a walk that would never end)', () =>
    refused(
      'l1-aliased.qcow2',
      (f, h) => {
        // A 64 GiB disk: 128 L1 entries, all pointing at the one real L2 table.
        const l1Offset = Number(h.readBigUInt64BE(40));
        const entry = readFileSync(f).subarray(l1Offset, l1Offset + 8);
        writeAt(f, 24, u64(64n << 30n));
        writeAt(f, 36, u32(128));
        for (let i = 0; i < 128; i++) writeAt(f, l1Offset + i * 8, entry);
      },
      /more L2 tables than the file can hold/,
    ));

  test('an L2 entry past the end of the file', () =>
    refused(
      'l2-outside.qcow2',
      (f, h) => {
        const l1Offset = Number(h.readBigUInt64BE(40));
        const l2Offset = Number(readFileSync(f).readBigUInt64BE(l1Offset) & 0x00fffffffffffe00n);
        writeAt(f, l2Offset, u64((1n << 63n) | (1n << 40n)));
      },
      /data cluster offset .* outside the file/,
    ));

  test('a virtual size past what a number holds', () =>
    refused('huge.qcow2', (f) => writeAt(f, 24, u64(1n << 60n)), /virtual size .* too large/));

  test('reserved bits in an L1 entry', () =>
    refused(
      'l1-reserved.qcow2',
      (f, h) => {
        const l1Offset = Number(h.readBigUInt64BE(40));
        writeAt(f, l1Offset, u64(readFileSync(f).readBigUInt64BE(l1Offset) | (1n << 60n)));
      },
      /L1 entry 0 has reserved bits set/,
    ));
});

function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
