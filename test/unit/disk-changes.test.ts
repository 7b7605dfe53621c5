/**
 * The changed-files differ (apps/host-agent/src/disk-changes) against real images: ext4/ext3
 * filesystems made by mkfs.ext4 -d, changed by debugfs (and by raw writes into a file's blocks,
 * which change contents without touching the inode), turned into qcow2 layers that hold only
 * the changed clusters (qemu-io writes over a backing file, as a VM's writes would be).
 * Hostile cases corrupt those images with seeded pseudo-random bytes.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readFileSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { type FileChange, WarrenError } from '@warren/protocol';
import {
  changedFiles,
  changedFilesIsolated,
  type DiskChain,
  diskChangesWorkers,
  openChain,
} from '../../apps/host-agent/src/disk-changes/index.ts';
import { prng } from '../helpers/prng.ts';
import { until } from '../helpers/until.ts';

const dir = await mkdtemp(join(tmpdir(), 'wt-diskchanges-'));
/** This checkout's worker, as its processes' command lines name it (other checkouts may run theirs). */
const WORKER = join(import.meta.dirname, '../../apps/host-agent/src/disk-changes/worker.ts');
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

function debugfs(image: string, commands: string[]): void {
  const cmdfile = join(dir, 'debugfs.cmds');
  writeFileSync(cmdfile, `${commands.join('\n')}\n`);
  sh('debugfs', ['-w', '-f', cmdfile, image]);
}

function blockSize(image: string): number {
  return Number(/Block size:\s+(\d+)/.exec(sh('dumpe2fs', ['-h', image]))![1]);
}

/** The physical block holding logical block `logical` of the file at `path`. */
function bmap(image: string, path: string, logical: number): number {
  const block = Number(sh('debugfs', ['-R', `bmap ${path} ${logical}`, image]).trim());
  assert.ok(block > 0, `${path} has no block ${logical}`);
  return block;
}

/** The byte offset of the inode record of `path`. */
function inodeOffset(image: string, path: string): number {
  const m = /located at block (\d+), offset (0x[0-9a-f]+)/.exec(
    sh('debugfs', ['-R', `imap ${path}`, image]),
  )!;
  return Number(m[1]) * blockSize(image) + Number(m[2]);
}

/** The first extent tree block (below the inode) of the file at `path`. */
function extentTreeBlock(image: string, path: string): number {
  return Number(/\(ETB0\):\s*(\d+)/.exec(sh('debugfs', ['-R', `stat ${path}`, image]))![1]);
}

/** Overwrites a file's bytes at `offset` in place: new contents, same inode record to the byte. */
function rewriteInPlace(image: string, path: string, contents: string, offset = 0): void {
  const flags = Number(/Flags: (0x[0-9a-f]+)/.exec(sh('debugfs', ['-R', `stat ${path}`, image]))![1]);
  if (flags & 0x10000000) {
    // Inline data: the contents are in the inode's i_block.
    writeAt(image, inodeOffset(image, path) + 0x28 + offset, Buffer.from(contents));
    return;
  }
  const bs = blockSize(image);
  writeAt(image, bmap(image, path, Math.floor(offset / bs)) * bs + (offset % bs), Buffer.from(contents));
}

/**
 * A qcow2 layer over `backing` holding exactly the clusters in which `before` and `after` (raw
 * images of the same size) differ, written with qemu-io the way a guest's writes land.
 */
function makeLayer(
  before: string,
  afterRaw: string,
  backing: { path: string; format: 'raw' | 'qcow2' },
  out: string,
  opts: readonly string[] = [],
): void {
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', ...opts, '-b', backing.path, '-F', backing.format, out]);
  const a = readFileSync(before);
  const b = readFileSync(afterRaw);
  const chunk = 4096;
  const commands: string[] = [];
  let n = 0;
  for (let off = 0; off < a.length; ) {
    if (a.subarray(off, off + chunk).equals(b.subarray(off, off + chunk))) {
      off += chunk;
      continue;
    }
    let end = off + chunk;
    while (end < a.length && !a.subarray(end, end + chunk).equals(b.subarray(end, end + chunk))) end += chunk;
    const src = join(dir, `chunk-${n++}`);
    writeFileSync(src, b.subarray(off, end));
    commands.push('-c', `write -q -s ${src} ${off} ${end - off}`);
    off = end;
  }
  for (let i = 0; i < commands.length; i += 200)
    sh('qemu-io', ['-f', 'qcow2', ...commands.slice(i, i + 200), out]);
}

function digest(chain: DiskChain): string {
  const c = openChain(chain);
  try {
    const h = createHash('sha256');
    for (let o = 0; o < c.size; o += 1 << 20) h.update(c.read(o, Math.min(1 << 20, c.size - o)));
    return h.digest('hex');
  } finally {
    c.close();
  }
}

function qemuDigest(top: string, format: 'raw' | 'qcow2'): string {
  const out = join(dir, 'qemu-view.raw');
  sh('qemu-img', ['convert', '-f', format, '-O', 'raw', top, out]);
  const d = createHash('sha256').update(readFileSync(out)).digest('hex');
  sh('rm', ['-f', out]);
  return d;
}

/** The guest tree every variant starts from. */
async function makeTree(root: string): Promise<void> {
  const w = (p: string, data: string | Buffer) => {
    mkdirSync(join(root, p, '..'), { recursive: true });
    writeFileSync(join(root, p), data);
  };
  w('a/x.txt', 'hello\n');
  w('a/keep.txt', 'keep1\n');
  w('a/read.txt', 'read me\n');
  w('a/same.txt', 'same1\n');
  w('d/b/y.txt', 'y\n');
  w('d/b/z/deep.txt', 'deep\n');
  w('d/e/f.txt', 'f\n');
  await symlink('a/x.txt', join(root, 'link'));
  // Data runs between holes: one extent each, so the tree needs index blocks.
  const rnd = prng(42);
  const blob = Buffer.alloc(4 * 1024 * 1024);
  for (let i = 0; i < blob.length; i++) blob[i] = Math.floor(rnd() * 256);
  w('big/blob', blob);
  const sparse = openSync(join(root, 'big/sparse'), 'w');
  for (let i = 0; i < 300; i++) writeSync(sparse, Buffer.alloc(4096, i + 1), 0, 4096, i * 16384);
  closeSync(sparse);
  // Enough names for an htree (dx) directory.
  for (let i = 1; i <= 2000; i++) w(`many/f${i}`, `${i}\n`);
}

const tree = join(dir, 'tree');
await makeTree(tree);

/**
 * `dirs`: directories whose inode record the changes rewrite in this variant, by the first
 * layer and by the second (an inline directory's entries are in its inode; a block directory's
 * are not, and debugfs, unlike the kernel, leaves a directory's times alone).
 */
const VARIANTS: Array<{ name: string; mkfs: string[]; qcow2: string[]; dirs: [string[], string[]] }> = [
  {
    name: 'ext4, 1 KiB blocks (mkfs default at this size), 64 KiB clusters',
    mkfs: ['-t', 'ext4'],
    qcow2: [],
    dirs: [[], []],
  },
  {
    name: 'ext4, 4 KiB blocks, 4 KiB clusters',
    mkfs: ['-t', 'ext4', '-b', '4096'],
    qcow2: ['-o', 'cluster_size=4096'],
    dirs: [[], []],
  },
  { name: 'ext3 (block maps), qcow2 v2', mkfs: ['-t', 'ext3'], qcow2: ['-o', 'compat=0.10'], dirs: [[], []] },
  {
    name: 'ext4 with inline data',
    mkfs: ['-t', 'ext4', '-b', '4096', '-O', 'inline_data'],
    qcow2: [],
    dirs: [['/d'], ['/c']],
  },
];

/** base -> after1 -> after2, each a raw image, and the qcow2 layers between them. */
function buildVariant(name: string, mkfs: readonly string[], qcow2: readonly string[]) {
  const v = join(dir, name.replace(/[^a-z0-9]+/gi, '-'));
  mkdirSync(v);
  const base = join(v, 'base.raw');
  sh('mke2fs', ['-q', '-F', ...mkfs, '-d', tree, base, '64M']);
  const after1 = join(v, 'after1.raw');
  copyFileSync(base, after1);
  writeFileSync(join(v, 'new.txt'), 'a new file\n');
  debugfs(after1, [
    `write ${join(v, 'new.txt')} /a/new.txt`,
    'rm /a/x.txt',
    'mkdir /c',
    `write ${join(v, 'new.txt')} /c/inside`,
    'symlink /c/l /a/keep.txt',
    'unlink /d/b',
    'rm /many/f7',
    `write ${join(v, 'new.txt')} /many/f2001`,
    'rm /link',
    'mkdir /link',
    // What a read does under relatime: the access time moves, nothing else.
    'set_inode_field /a/read.txt atime 20300101120000',
  ]);
  rewriteInPlace(after1, '/a/same.txt', 'same2\n');
  rewriteInPlace(after1, '/big/sparse', 'changed', 200 * 16384);
  const layer1 = join(v, 'layer1.qcow2');
  makeLayer(base, after1, { path: base, format: 'raw' }, layer1, qcow2);
  const after2 = join(v, 'after2.raw');
  copyFileSync(after1, after2);
  debugfs(after2, [`write ${join(v, 'new.txt')} /c/second`, 'rm /a/new.txt']);
  rewriteInPlace(after2, '/a/keep.txt', 'keep2\n');
  const layer2 = join(v, 'layer2.qcow2');
  makeLayer(after1, after2, { path: layer1, format: 'qcow2' }, layer2, qcow2);
  return { dir: v, base, after1, after2, layer1, layer2 };
}

const ROOT = { disk: 'root', mountPoint: '/', max: 10_000 } as const;
const raw = (base: string, ...layers: string[]): DiskChain => ({ base, baseFormat: 'raw', layers });
const c = (change: FileChange['change'], type: FileChange['type'], path: string): FileChange => ({
  disk: 'root',
  path,
  change,
  type,
});

for (const variant of VARIANTS) {
  describe(variant.name, () => {
    const v = buildVariant(variant.name, variant.mkfs, variant.qcow2);

    test('the chain reads as qemu-img reads it', () => {
      assert.equal(digest(raw(v.base, v.layer1)), qemuDigest(v.layer1, 'qcow2'));
      assert.equal(digest(raw(v.base, v.layer1, v.layer2)), qemuDigest(v.layer2, 'qcow2'));
      assert.equal(digest(raw(v.base, v.layer1, v.layer2)), qemuDigest(v.after2, 'raw'));
    });

    const FIRST: FileChange[] = [
      c('modified', 'file', '/a/same.txt'),
      c('added', 'file', '/a/new.txt'),
      c('deleted', 'file', '/a/x.txt'),
      c('modified', 'file', '/big/sparse'),
      c('added', 'directory', '/c'),
      c('added', 'symlink', '/c/l'),
      c('added', 'file', '/c/inside'),
      c('deleted', 'directory', '/d/b'),
      c('deleted', 'file', '/d/b/y.txt'),
      c('deleted', 'directory', '/d/b/z'),
      c('deleted', 'file', '/d/b/z/deep.txt'),
      c('modified', 'directory', '/link'),
      c('added', 'file', '/many/f2001'),
      c('deleted', 'file', '/many/f7'),
      ...variant.dirs[0].map((d) => c('modified', 'directory', d)),
    ].sort((a, b) => (a.path < b.path ? -1 : 1));

    test('one layer: added, deleted, modified (also in place, same size), a read file left out', () => {
      const r = changedFiles(raw(v.base), raw(v.base, v.layer1), ROOT);
      assert.deepEqual(r, { changes: FIRST, truncated: false });
    });

    test('the same answer without the layer map (chains that do not extend each other)', () => {
      const r = changedFiles(raw(v.base), raw(v.after1), ROOT);
      assert.deepEqual(r, { changes: FIRST, truncated: false });
    });

    const SECOND: FileChange[] = [
      c('modified', 'file', '/a/keep.txt'),
      c('deleted', 'file', '/a/new.txt'),
      c('added', 'file', '/c/second'),
      ...variant.dirs[1].map((d) => c('modified', 'directory', d)),
    ].sort((a, b) => (a.path < b.path ? -1 : 1));

    test('two layers: only what the top layer changed', () => {
      assert.deepEqual(changedFiles(raw(v.base, v.layer1), raw(v.base, v.layer1, v.layer2), ROOT), {
        changes: SECOND,
        truncated: false,
      });
      assert.deepEqual(changedFiles(raw(v.after1), raw(v.after2), ROOT), {
        changes: SECOND,
        truncated: false,
      });
    });

    test('nothing changed: an empty list', () => {
      assert.deepEqual(changedFiles(raw(v.base, v.layer1), raw(v.base, v.layer1), ROOT), {
        changes: [],
        truncated: false,
      });
    });
  });
}

const main = buildVariant('main', ['-t', 'ext4'], []);

test('the data volume: paths under its mount point, a prefix in path order when over max', () => {
  const r = changedFiles(raw(main.base), raw(main.base, main.layer1), {
    disk: 'data',
    mountPoint: '/workspace',
    max: 3,
  });
  assert.deepEqual(r, {
    changes: [
      { disk: 'data', path: '/workspace/a/new.txt', change: 'added', type: 'file' },
      { disk: 'data', path: '/workspace/a/same.txt', change: 'modified', type: 'file' },
      { disk: 'data', path: '/workspace/a/x.txt', change: 'deleted', type: 'file' },
    ],
    truncated: true,
  });
});

test('an inline-data directory continued in its system.data attribute', () => {
  // e2fsprogs turns a full inline directory into a block one; the kernel first spills entries
  // into the in-inode attribute, as set here by hand: one entry naming /a/keep.txt's inode.
  const base = join(dir, 'inline-base.raw');
  sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-O', 'inline_data', '-d', tree, base, '64M']);
  const image = join(dir, 'inline-xattr.raw');
  copyFileSync(base, image);
  const ino = Number(/Inode: (\d+)/.exec(sh('debugfs', ['-R', 'stat /a/keep.txt', image]))![1]);
  const entry = Buffer.alloc(16);
  entry.writeUInt32LE(ino, 0);
  entry.writeUInt16LE(16, 4);
  entry[6] = 5;
  entry[7] = 1;
  entry.write('extra', 8);
  writeFileSync(join(dir, 'inline-entry'), entry);
  debugfs(image, [`ea_set -f ${join(dir, 'inline-entry')} /d/e system.data`]);
  assert.match(sh('debugfs', ['-R', 'ls /d/e', image]), /extra/);
  assert.deepEqual(changedFiles(raw(base), raw(image), ROOT).changes, [
    c('modified', 'directory', '/d/e'),
    c('added', 'file', '/d/e/extra'),
  ]);
});

test('qcow2 zero clusters read as zeros, and a layer past a smaller one reads zeros there', () => {
  const top = join(main.dir, 'zeros.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', main.layer1, '-F', 'qcow2', top, '80M']);
  sh('qemu-io', ['-f', 'qcow2', '-c', 'write -q -z 1M 3M', '-c', 'write -q -P 0x5a 70M 64k', top]);
  assert.equal(digest(raw(main.base, main.layer1, top)), qemuDigest(top, 'qcow2'));
});

test('the isolated worker gives the same answer', async () => {
  const r = await changedFilesIsolated(raw(main.base), raw(main.base, main.layer1), {
    ...ROOT,
    timeoutMs: 60_000,
  });
  assert.equal(r.truncated, false);
  assert.ok(r.changes.some((x) => x.path === '/a/same.txt' && x.change === 'modified'));
  assert.equal(r.changes.length, 14);
});

/**
 * A copy of main's after1 whose last changes are committed in the journal only, as in a
 * snapshot of a running VM: /a/keep.txt renamed to kepp.txt, and a zeroed /many block logged
 * then revoked by a later transaction (so replay must leave it as it is). Its journal: the
 * superblock, then descriptor 1, data 2-4, commit 5, descriptor 6, data 7, commit 8, revoke 9,
 * commit 10.
 */
function journaledImage(name: string, checksums = false): string {
  const image = join(main.dir, name);
  copyFileSync(main.after1, image);
  const bs = blockSize(image);
  const aBlock = bmap(image, '/a', 0);
  const manyBlock = bmap(image, '/many', 0);
  const renamed = readFileSync(image).subarray(aBlock * bs, (aBlock + 1) * bs);
  const at = renamed.indexOf('keep.txt');
  assert.ok(at > 0);
  renamed.write('kepp', at);
  // With two more blocks logged as they are, so a transaction has several tags to parse.
  const more = [1, 2].map((i) => bmap(image, '/many', i));
  const same = more.map((b) => readFileSync(image).subarray(b * bs, (b + 1) * bs));
  writeFileSync(join(main.dir, 'renamed.blk'), Buffer.concat([renamed, ...same]));
  writeFileSync(join(main.dir, 'zero.blk'), Buffer.alloc(bs));
  debugfs(image, [
    checksums ? 'jo -c' : 'jo',
    `jw -b ${[aBlock, ...more].join(',')} ${join(main.dir, 'renamed.blk')}`,
    `jw -b ${manyBlock} ${join(main.dir, 'zero.blk')}`,
    `jw -r ${manyBlock}`,
    'jc',
  ]);
  return image;
}

for (const checksums of [false, true]) {
  test(`the journal${checksums ? ' (v3 checksums: 16-byte tags, block tails)' : ''}: committed transactions are read as the kernel would replay them, revoked ones are not`, () => {
    const image = journaledImage(`journaled-${checksums}.raw`, checksums);
    if (checksums) assert.match(sh('dumpe2fs', ['-h', image]), /journal_checksum_v3/);
    const log = sh('debugfs', ['-R', 'logdump', image]);
    assert.match(log, /sequence 1, type 1 \(descriptor block\) at block 1\n/);
    assert.match(log, /sequence 3, type 5 \(revoke table\) at block 9\n/);
    assert.match(sh('dumpe2fs', ['-h', image]), /needs_recovery/);
    const layer = join(main.dir, `journaled-${checksums}.qcow2`);
    makeLayer(main.after1, image, { path: main.layer1, format: 'qcow2' }, layer);
    const expected = {
      changes: [c('deleted', 'file', '/a/keep.txt'), c('added', 'file', '/a/kepp.txt')],
      truncated: false,
    };
    assert.deepEqual(
      changedFiles(raw(main.base, main.layer1), raw(main.base, main.layer1, layer), ROOT),
      expected,
    );
    assert.deepEqual(changedFiles(raw(main.after1), raw(image), ROOT), expected);
    // debugfs's own replay (journal_run) gives the filesystem the list was read from.
    const replayed = join(main.dir, `replayed-${checksums}.raw`);
    copyFileSync(image, replayed);
    debugfs(replayed, ['jr']);
    assert.doesNotMatch(sh('dumpe2fs', ['-h', replayed]), /needs_recovery/);
    assert.deepEqual(changedFiles(raw(main.after1), raw(replayed), ROOT), expected);
    assert.deepEqual(changedFiles(raw(image), raw(replayed), ROOT), { changes: [], truncated: false });
  });
}

/**
 * Five blocks of /big/sparse's data become index nodes each pointing 340 times at the next,
 * and the last a leaf of 340 unwritten extents; /many's inode gets a root pointing 4 times at
 * the first: 4 * 340^4 leaves to visit. Mode 0600, as a VM's disks are.
 */
function fanoutImage(): string {
  const image = join(main.dir, 'fanout.raw');
  copyFileSync(main.after1, image);
  const bs = blockSize(image);
  const blocks = [0, 1, 2, 3, 4].map((i) => bmap(image, '/big/sparse', i * 16));
  const perNode = Math.floor((bs - 12) / 12);
  const node = (depth: number, entries: number, entry: (b: Buffer, i: number) => void, size = bs) => {
    const b = Buffer.alloc(size);
    b.writeUInt16LE(0xf30a, 0);
    b.writeUInt16LE(entries, 2);
    b.writeUInt16LE(entries, 4);
    b.writeUInt16LE(depth, 6);
    for (let i = 0; i < entries; i++) entry(b, 12 + i * 12);
    return b;
  };
  const index = (child: number) => (b: Buffer, e: number) => {
    b.writeUInt32LE(0, e);
    b.writeUInt32LE(child, e + 4);
  };
  for (let d = 4; d >= 1; d--) writeAt(image, blocks[d]! * bs, node(d, perNode, index(blocks[d - 1]!)));
  writeAt(
    image,
    blocks[0]! * bs,
    node(0, perNode, (b, e) => {
      b.writeUInt32LE(0, e);
      b.writeUInt16LE(32768 + 1, e + 4);
      b.writeUInt32LE(blocks[0]!, e + 8);
    }),
  );
  writeAt(image, inodeOffset(image, '/many') + 0x28, node(5, 4, index(blocks[4]!), 60));
  chmodSync(image, 0o600);
  return image;
}

/** Runs changedFiles on possibly hostile disks: it returns a list or throws a plain Error, nothing else. */
function survives(old: DiskChain, now: DiskChain): string {
  try {
    const r = changedFiles(old, now, ROOT);
    assert.ok(Array.isArray(r.changes) && r.changes.length <= ROOT.max);
    return 'returned';
  } catch (e) {
    // Not a RangeError or TypeError from an unchecked offset: an Error this code threw on purpose.
    assert.equal((e as Error).constructor, Error, String((e as Error).stack));
    return 'refused';
  }
}

describe('hostile disks', () => {
  const SEEDS = [1, 2, 3, 4, 5, 6];

  test('corrupt L2 entries of the top layer', () => {
    const out: string[] = [];
    for (const seed of SEEDS) {
      const layer = join(main.dir, `bad-l2-${seed}.qcow2`);
      copyFileSync(main.layer1, layer);
      const h = readFileSync(layer).subarray(0, 112);
      const l1 = Number(h.readBigUInt64BE(40));
      const l2 = Number(readFileSync(layer).readBigUInt64BE(l1) & 0x00fffffffffffe00n);
      const rnd = prng(seed);
      const clusters = Math.floor(readFileSync(layer).length / 65536);
      for (let i = 0; i < 8; i++) {
        const entry = Buffer.alloc(8);
        for (let j = 0; j < 8; j++) entry[j] = Math.floor(rnd() * 256);
        // Most entries well-formed but pointing at another cluster of the file (metadata, the
        // header, past the end), the rest random bits.
        if (rnd() < 0.8) entry.writeBigUInt64BE((1n << 63n) | (BigInt(Math.floor(rnd() * clusters)) << 16n));
        writeAt(layer, l2 + Math.floor(rnd() * 1024) * 8, entry);
      }
      out.push(survives(raw(main.base), raw(main.base, layer)));
    }
    assert.ok(out.includes('refused'), out.join());
    assert.ok(out.includes('returned'), out.join());
  });

  const corruptions: Array<[string, (image: string) => number, number]> = [
    ['the superblock', () => 1024, 256],
    ['a directory block', (image) => bmap(image, '/many', 3) * blockSize(image), 1024],
    ['an htree root block', (image) => bmap(image, '/many', 0) * blockSize(image), 1024],
    ['an extent header in an inode', (image) => inodeOffset(image, '/big/sparse') + 0x28, 60],
    ['an inode record', (image) => inodeOffset(image, '/big/sparse'), 256],
    ['an extent tree block', (image) => extentTreeBlock(image, '/big/sparse') * blockSize(image), 1024],
    ['the journal superblock', (image) => bmap(image, '<8>', 0) * blockSize(image), 1024],
    ['a journal descriptor block', (image) => bmap(image, '<8>', 1) * blockSize(image), 1024],
    ['a journal revoke block', (image) => bmap(image, '<8>', 9) * blockSize(image), 1024],
  ];
  for (const [what, where, span] of corruptions) {
    test(`random bytes in ${what}`, () => {
      const template = journaledImage('bad-template.raw');
      const at = where(template);
      const out: string[] = [];
      for (const seed of SEEDS) {
        const image = join(main.dir, `bad-${seed}.raw`);
        copyFileSync(template, image);
        const rnd = prng(seed);
        for (let i = 0; i < 24; i++)
          writeAt(image, at + Math.floor(rnd() * span), Buffer.from([Math.floor(rnd() * 256)]));
        out.push(survives(raw(main.base), raw(image)));
        out.push(survives(raw(image), raw(main.base)));
      }
      assert.equal(out.length, SEEDS.length * 2);
    });
  }

  test('a directory linked into its own child ends, listed once', () => {
    const image = join(main.dir, 'cycle.raw');
    copyFileSync(main.base, image);
    debugfs(image, ['link /d /d/e/loop']);
    const layer = join(main.dir, 'cycle.qcow2');
    makeLayer(main.base, image, { path: main.base, format: 'raw' }, layer);
    const r = changedFiles(raw(main.base), raw(main.base, layer), ROOT);
    assert.deepEqual(r.changes, [c('added', 'directory', '/d/e/loop')]);
  });

  test('an extent tree that fans out 5 levels deep runs out of budget, and the isolated worker is killed', async () => {
    const image = fanoutImage();
    assert.throws(() => changedFiles(raw(main.base), raw(image), ROOT), /more work to walk than allowed/);
    assert.throws(
      () => changedFiles(raw(main.base), raw(image), { ...ROOT, timeoutMs: 100 }),
      /took longer to walk than allowed/,
    );
    const err = await changedFilesIsolated(raw(main.base), raw(image), { ...ROOT, timeoutMs: 300 }).then(
      () => assert.fail('it returned'),
      (e) => e,
    );
    assert.ok(err instanceof WarrenError, String(err));
    assert.equal(err.code, 'DISK_CHANGES_FAILED');
    assert.match(err.message, /took more than 300 ms/);
    // The worker, killed, is gone (this file is the only one that starts it).
    await until('the worker is gone', () => {
      try {
        sh('pgrep', ['-f', WORKER]);
        return false;
      } catch {
        return true;
      }
    });
  });

  test('crafted fields are refused with their reason', () => {
    const bs = blockSize(main.after1);
    const crafted = (name: string, patch: (image: string) => void) => {
      const image = join(main.dir, `crafted-${name}.raw`);
      copyFileSync(main.after1, image);
      patch(image);
      return () => changedFiles(raw(main.after1), raw(image), ROOT);
    };
    const many = (image: string) => inodeOffset(image, '/many') + 0x28;
    const u16 = (v: number) => Buffer.from([v & 0xff, v >> 8]);
    const u32 = (v: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(v);
      return b;
    };
    assert.throws(
      crafted('entries', (i) => writeAt(i, many(i) + 2, u16(0xffff))),
      /extent node has more entries than fit/,
    );
    assert.throws(
      crafted('outside', (i) => writeAt(i, many(i) + 12 + 8, u32(0xfffffff0))),
      /outside the filesystem/,
    );
    assert.throws(
      crafted('loop', (i) => {
        // The root becomes an index whose one child is a block that indexes itself.
        const self = bmap(i, '/big/blob', 0);
        const node = Buffer.alloc(24);
        node.writeUInt16LE(0xf30a, 0);
        node.writeUInt16LE(1, 2);
        node.writeUInt16LE(4, 4);
        node.writeUInt16LE(1, 6);
        node.writeUInt32LE(0, 12);
        node.writeUInt32LE(self, 16);
        writeAt(i, many(i), node);
        writeAt(i, self * bs, node);
      }),
      /extent tree too deep/,
    );
    assert.throws(
      crafted('reclen', (i) => writeAt(i, bmap(i, '/many', 3) * bs + 4, u16(0))),
      /corrupt directory entry/,
    );
    assert.throws(
      crafted('ino', (i) => writeAt(i, bmap(i, '/many', 3) * bs, u32(0xfffffff0))),
      /names inode 4294967280, out of range/,
    );
    const journal = journaledImage('crafted-journal.raw');
    const start = Buffer.alloc(4);
    start.writeUInt32BE(0xffffff);
    writeAt(journal, bmap(journal, '<8>', 0) * bs + 0x1c, start);
    assert.throws(
      () => changedFiles(raw(main.after1), raw(journal), ROOT),
      /ext4 journal: its bounds are invalid/,
    );
    const qcow2 = (name: string, offset: number, value: bigint | number) => {
      const f = join(main.dir, `crafted-${name}.qcow2`);
      copyFileSync(main.layer1, f);
      const b = Buffer.alloc(typeof value === 'bigint' ? 8 : 4);
      if (typeof value === 'bigint') b.writeBigUInt64BE(value);
      else b.writeUInt32BE(value);
      writeAt(f, offset, b);
      return () => changedFiles(raw(main.base), raw(main.base, f), ROOT);
    };
    assert.throws(qcow2('bits', 20, 30), /cluster_bits 30 is outside 9..21/);
    assert.throws(qcow2('l1size', 36, 0x10000000), /L1 table of 268435456 entries is too large/);
    assert.throws(qcow2('l1offset', 40, 1n << 40n), /L1 table offset \d+ is outside the file/);
    assert.throws(qcow2('size', 24, 1n << 60n), /virtual size \d+ is too large/);
  });

  test('the worker reads the 0600 disks through inherited descriptors, as nobody, and reports its error', async (t) => {
    if (process.getuid?.() !== 0)
      return t.skip('the worker drops to nobody only when the agent runs as root');
    const image = fanoutImage();
    const running = changedFilesIsolated(raw(main.base), raw(image), { ...ROOT, timeoutMs: 120_000 }).then(
      () => assert.fail('it returned'),
      (e) => e,
    );
    // It starts as root, loads its code, then drops all four uids before it reads its job.
    const uids = await until(
      'the worker has dropped root',
      () => {
        try {
          const pid = sh('pgrep', ['-f', WORKER]).trim().split('\n')[0]!;
          const line = /^Uid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!.trim();
          return line.startsWith('0') ? undefined : line.split(/\s+/);
        } catch {
          return undefined;
        }
      },
      20_000,
      10,
    );
    assert.deepEqual(uids, ['65534', '65534', '65534', '65534']);
    const err = await running;
    assert.ok(err instanceof WarrenError, String(err));
    assert.equal(err.code, 'DISK_CHANGES_FAILED');
    assert.match(
      err.message,
      /^cannot list the changed files: the filesystem needs more work to walk than allowed/,
    );
  });

  test('two workers at a time: a third call waits, and gives up at its deadline without starting one', async () => {
    const image = fanoutImage();
    const slow = [1, 2].map(() =>
      changedFilesIsolated(raw(main.base), raw(image), { ...ROOT, timeoutMs: 120_000 }).then(
        () => assert.fail('it returned'),
        (e) => e,
      ),
    );
    const third = changedFilesIsolated(raw(main.base), raw(main.base, main.layer1), {
      ...ROOT,
      timeoutMs: 500,
    }).then(
      () => assert.fail('it returned'),
      (e) => e,
    );
    assert.deepEqual(diskChangesWorkers(), { running: 2, waiting: 1 });
    const err = await third;
    assert.ok(err instanceof WarrenError, String(err));
    assert.match(err.message, /waited more than 500 ms for other disk reads to finish/);
    assert.deepEqual(diskChangesWorkers(), { running: 2, waiting: 0 });
    for (const e of await Promise.all(slow)) assert.match(String(e), /more work to walk than allowed/);
    assert.deepEqual(diskChangesWorkers(), { running: 0, waiting: 0 });
  });

  test("errors name the disk files, not the worker's descriptors or host paths", async () => {
    const layer = join(main.dir, 'named.qcow2');
    copyFileSync(main.layer1, layer);
    const h = Buffer.alloc(4);
    h.writeUInt32BE(1);
    writeAt(layer, 32, h);
    const err = await changedFilesIsolated(raw(main.base), raw(main.base, layer), {
      ...ROOT,
      timeoutMs: 60_000,
    }).then(
      () => assert.fail('it returned'),
      (e) => e,
    );
    assert.equal(
      err.message,
      'cannot list the changed files: qcow2 layer named.qcow2: encrypted images are not supported',
    );
    const missing = await changedFilesIsolated(raw(main.base), raw(main.base, join(dir, 'gone.qcow2')), {
      ...ROOT,
      timeoutMs: 60_000,
    }).then(
      () => assert.fail('it returned'),
      (e) => e,
    );
    assert.equal(missing.code, 'DISK_CHANGES_FAILED');
    assert.equal(missing.message, "cannot open the VM's disks: gone.qcow2: ENOENT");
    assert.deepEqual(diskChangesWorkers(), { running: 0, waiting: 0 });
  });

  test('qcow2 features this reader does not implement are refused by name', () => {
    const header = (name: string, patch: (b: Buffer) => void) => {
      const f = join(main.dir, `${name}.qcow2`);
      copyFileSync(main.layer1, f);
      const h = readFileSync(f).subarray(0, 112);
      patch(h);
      writeAt(f, 0, h);
      return f;
    };
    const refused = (layer: string, message: RegExp) =>
      assert.throws(() => changedFiles(raw(main.base), raw(main.base, layer), ROOT), message);
    refused(
      header('encrypted', (h) => h.writeUInt32BE(1, 32)),
      /encrypted images are not supported/,
    );
    refused(
      header('ext-data', (h) => h.writeBigUInt64BE(1n << 2n, 72)),
      /external data files are not supported/,
    );
    refused(
      header('ext-l2', (h) => h.writeBigUInt64BE(1n << 4n, 72)),
      /extended L2 entries are not supported/,
    );
    refused(
      header('unknown', (h) => h.writeBigUInt64BE(1n << 9n, 72)),
      /unknown incompatible features 0x200/,
    );
    refused(
      header('corrupt', (h) => h.writeBigUInt64BE(1n << 1n, 72)),
      /marked corrupt/,
    );
    const compressed = join(main.dir, 'compressed.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', main.base, '-F', 'raw', compressed]);
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -q -c -P 0x11 0 64k', compressed]);
    refused(compressed, /compressed clusters are not supported/);
  });
});
