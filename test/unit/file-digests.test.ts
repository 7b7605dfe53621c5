/**
 * The restore drill's host-side file digests (apps/host-agent/src/disk-changes/file-digests.ts)
 * against real filesystems made by mkfs.ext4 -d from a directory: every sampled digest must equal
 * node's SHA-256 of the source file. Hostile cases corrupt those images (an extent pointing past
 * the filesystem, a huge file size, a directory linked into itself, seeded random bytes over the
 * inode table) and check the read ends, bounded, in a sample or a clean error.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { WarrenError } from '@warren/protocol';
import {
  type DiskChain,
  type FileDigest,
  fileDigests,
  fileDigestsIsolated,
} from '../../apps/host-agent/src/disk-changes/index.ts';
import { prng } from '../helpers/prng.ts';

const dir = await mkdtemp(join(tmpdir(), 'wt-filedigests-'));
after(() => rm(dir, { recursive: true, force: true }));

const MOUNT = '/workspace';
const MAX_FILE = 2 * 1024 * 1024;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function bytes(n: number, seed: number): Buffer {
  const rnd = prng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

function writeAt(file: string, offset: number, data: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

const tree = join(dir, 'tree');
{
  const w = (p: string, data: string | Buffer) => {
    mkdirSync(join(tree, p, '..'), { recursive: true });
    writeFileSync(join(tree, p), data);
  };
  w('a/hello.txt', 'hello\n');
  w('a/empty', '');
  w('a/block', bytes(4096, 1));
  w('a/odd', bytes(4096 * 3 + 17, 2));
  w('b/c/deep.txt', 'deep\n');
  w('b/ünïcode.txt', 'utf-8 name\n');
  w('big/random', bytes(MAX_FILE - 5, 3));
  w('big/too-large', bytes(MAX_FILE + 1, 4));
  w('with\nnewline', 'skipped: sha256sum would escape its name\n');
  w('back\\slash', 'skipped too\n');
  for (let i = 0; i < 40; i++) w(`many/f${i}`, `${i}\n`);
  // Runs of data between holes (several extents), and a hole at the end.
  const fd = openSync(join(tree, 'a/sparse'), 'w');
  for (let i = 0; i < 20; i++) writeSync(fd, Buffer.alloc(3000, i + 1), 0, 3000, i * 40_000);
  writeSync(fd, Buffer.alloc(1), 0, 1, 1_200_000);
  closeSync(fd);
  await symlink('a/hello.txt', join(tree, 'link'));
}

/** What the walk must give: the plain regular files up to MAX_FILE, directories in byte order, depth first. */
function expected(root: string, rel = ''): FileDigest[] {
  const out: FileDigest[] = [];
  const names = readdirSync(join(root, rel), { encoding: 'buffer' }).sort(Buffer.compare);
  for (const n of names) {
    const name = n.toString('utf8');
    if (/[\\\n]/.test(name)) continue;
    const p = `${rel}/${name}`;
    const st = lstatSync(join(root, p));
    if (st.isDirectory()) out.push(...expected(root, p));
    else if (st.isFile() && st.size <= MAX_FILE)
      out.push({
        path: MOUNT + p,
        size: st.size,
        sha256: createHash('sha256')
          .update(readFileSync(join(root, p)))
          .digest('hex'),
      });
  }
  return out;
}

function image(name: string, mkfs: string[]): string {
  const path = join(dir, `${name}.img`);
  sh('truncate', ['-s', '64M', path]);
  sh('mkfs.ext4', ['-q', ...mkfs, '-d', tree, path]);
  return path;
}

function chain(path: string): DiskChain {
  return { base: path, baseFormat: 'raw', layers: [] };
}

function debugfs(img: string, commands: string[]): string {
  const cmdfile = join(dir, 'debugfs.cmds');
  writeFileSync(cmdfile, `${commands.join('\n')}\n`);
  return sh('debugfs', ['-w', '-f', cmdfile, img]);
}

function blockSize(img: string): number {
  return Number(/Block size:\s+(\d+)/.exec(sh('dumpe2fs', ['-h', img]))![1]);
}

/** The byte offset of the inode record of `path`. */
function inodeOffset(img: string, path: string): number {
  const m = /located at block (\d+), offset (0x[0-9a-f]+)/.exec(sh('debugfs', ['-R', `imap ${path}`, img]))!;
  return Number(m[1]) * blockSize(img) + Number(m[2]);
}

const want = expected(tree);
const options = { mountPoint: MOUNT, max: 1000, maxFileBytes: MAX_FILE };

describe('file digests of a restored volume', () => {
  test('the sample is what the source tree holds', () => {
    // The test's own expectations first: it must cover what it claims to.
    assert.ok(want.some((f) => f.path === `${MOUNT}/a/sparse`));
    assert.ok(want.some((f) => f.path === `${MOUNT}/b/ünïcode.txt`));
    assert.ok(!want.some((f) => f.path.includes('too-large') || f.path.includes('slash')));
    assert.equal(want.length, 48);
  });

  for (const [name, mkfs] of [
    ['ext4, 4 KiB blocks', ['-t', 'ext4', '-b', '4096']],
    ['ext4, 1 KiB blocks', ['-t', 'ext4', '-b', '1024']],
    ['ext3 (block maps)', ['-t', 'ext3']],
  ] as const) {
    test(`${name}: every digest equals the source file's, in walk order`, () => {
      const img = image(name.replace(/\W+/g, '-'), [...mkfs]);
      assert.deepEqual(fileDigests(chain(img), options), want);
      // A smaller sample is the first files of the same walk.
      assert.deepEqual(fileDigests(chain(img), { ...options, max: 5 }), want.slice(0, 5));
    });
  }

  test('the isolated worker answers the same', async () => {
    const img = image('isolated', ['-t', 'ext4', '-b', '4096']);
    assert.deepEqual(await fileDigestsIsolated(chain(img), { ...options, timeoutMs: 60_000 }), want);
  });

  test('an extent pointing outside the filesystem is a clean error', async () => {
    const img = image('outside', ['-t', 'ext4', '-b', '4096']);
    // The inode's extent root holds one leaf extent for a small file: its start block (ee_start_lo).
    const at = inodeOffset(img, '/a/hello.txt') + 0x28 + 12 + 8;
    writeAt(img, at, Buffer.from([0xf0, 0xff, 0xff, 0x7f]));
    assert.throws(() => fileDigests(chain(img), options), /extent points outside the filesystem/);
    const err = await fileDigestsIsolated(chain(img), { ...options, timeoutMs: 60_000 }).then(
      () => assert.fail('read a file outside the filesystem'),
      (e: unknown) => e as WarrenError,
    );
    assert.ok(err instanceof WarrenError);
    assert.equal(err.code, 'DISK_CHANGES_FAILED');
    assert.match(err.message, /cannot read the files' digests: ext4: extent points outside the filesystem/);
  });

  test('a huge file size is left out, not read', () => {
    const img = image('huge', ['-t', 'ext4', '-b', '4096']);
    // i_size_lo and i_size_high: 2^44 + 1 bytes.
    const at = inodeOffset(img, '/a/hello.txt');
    writeAt(img, at + 0x04, Buffer.from([1, 0, 0, 0]));
    writeAt(img, at + 0x6c, Buffer.from([0, 0x10, 0, 0]));
    const started = Date.now();
    const got = fileDigests(chain(img), options);
    assert.ok(Date.now() - started < 30_000);
    assert.deepEqual(
      got,
      want.filter((f) => f.path !== `${MOUNT}/a/hello.txt`),
    );
  });

  test('a size larger than the blocks behind it reads the rest as zeros, bounded by the size limit', () => {
    const img = image('grown', ['-t', 'ext4', '-b', '4096']);
    const at = inodeOffset(img, '/a/hello.txt');
    writeAt(img, at + 0x04, Buffer.from([0, 0, 0x10, 0])); // 1 MiB
    const got = fileDigests(chain(img), options).find((f) => f.path === `${MOUNT}/a/hello.txt`)!;
    const grown = Buffer.alloc(1024 * 1024);
    grown.write('hello\n');
    assert.equal(got.sha256, createHash('sha256').update(grown).digest('hex'));
  });

  test('a directory linked into itself is walked once', () => {
    const img = image('loop', ['-t', 'ext4', '-b', '4096']);
    debugfs(img, ['link /b /b/c/loop']);
    assert.deepEqual(fileDigests(chain(img), options), want);
  });

  test('random bytes over the inode table end in a sample or a clean error, within the deadline', async () => {
    const base = image('random', ['-t', 'ext4', '-b', '4096']);
    const table = inodeOffset(base, '/a');
    for (let seed = 1; seed <= 6; seed++) {
      const img = join(dir, `random-${seed}.img`);
      copyFileSync(base, img);
      writeAt(img, table, bytes(16 * 1024, 1000 + seed));
      const started = Date.now();
      try {
        const got = await fileDigestsIsolated(chain(img), { ...options, timeoutMs: 60_000 });
        assert.ok(got.length <= options.max);
      } catch (e) {
        assert.ok(e instanceof WarrenError, String(e));
        assert.equal(e.code, 'DISK_CHANGES_FAILED');
      }
      assert.ok(Date.now() - started < 60_000);
    }
  });
});
