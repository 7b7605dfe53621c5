/**
 * What changed in a disk's filesystem between two points of its chain (a snapshot's and
 * now), read from the disk images alone, without the guest's help.
 *
 * When `now` is `old` with more layers on top, only the guest bytes those upper layers hold can
 * differ: an inode whose record, tree and data blocks are all outside them is the same file, and
 * nothing else about it needs reading. Everything the upper layers do touch is read from both
 * chains and compared byte for byte, so the answer is exact either way; the map only makes it
 * fast.
 */
import { resolve } from 'node:path';
import type { FileChange } from '@warren/protocol';
import { Budget, Ext4, type Inode, sameRecord } from './ext4.ts';
import { type DiskChain, openChain, type Qcow2Layer } from './qcow2.ts';

export interface ChangedFilesOptions {
  disk: 'root' | 'data';
  /** Where the guest mounts this filesystem: `/` for the root disk, `/workspace` for the data volume. */
  mountPoint: string;
  /** At most this many changes are returned, the first ones in path order. */
  max: number;
  /** Give up (an Error) after this long; the isolated worker passes its own deadline, so it ends even when nobody kills it. */
  timeoutMs?: number;
}

export interface ChangedFiles {
  changes: FileChange[];
  /** True when there were more than `max` changes: `changes` is then the first `max` of them. */
  truncated: boolean;
}

/** Blocks read plus entries parsed in one comparison, both filesystems together. */
const WORK_BUDGET = 200_000_000;
/** More runs of allocated clusters than this in the upper layers: stop mapping, compare everything. */
const MAX_ALLOCATED_RUNS = 1_000_000;
/** Longest guest path reported; a deeper tree is a crafted one. */
const MAX_PATH_CHARS = 64 * 1024;
/** Thrown to stop a block walk at the first difference; made once, since a stack trace costs. */
const DIFFERS = new Error('differs');
/** File contents are compared this many bytes at a time. */
const COMPARE_CHUNK = 1024 * 1024;

/** The guest byte ranges that layers above `old` hold: outside them both chains read the same. */
class UpperMap {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];
  private everything = false;

  constructor(upper: Qcow2Layer[] | undefined, oldSize: number, nowSize: number) {
    if (!upper) {
      this.everything = true;
      return;
    }
    const runs: Array<[number, number]> = [];
    for (const layer of upper) {
      if (
        !layer.allocated((s, e) => runs.push([s, e]), MAX_ALLOCATED_RUNS) ||
        runs.length > MAX_ALLOCATED_RUNS
      ) {
        this.everything = true;
        return;
      }
    }
    if (oldSize !== nowSize) runs.push([Math.min(oldSize, nowSize), Math.max(oldSize, nowSize)]);
    runs.sort((a, b) => a[0] - b[0]);
    for (const [s, e] of runs) {
      const last = this.ends.length - 1;
      if (last >= 0 && s <= this.ends[last]!) this.ends[last] = Math.max(this.ends[last]!, e);
      else {
        this.starts.push(s);
        this.ends.push(e);
      }
    }
  }

  /** Whether any byte of [offset, offset + length) may read differently in the two chains. */
  touched(offset: number, length: number): boolean {
    if (this.everything) return true;
    // The last run starting before the range's end: the only one that can overlap it.
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid]! < offset + length) lo = mid + 1;
      else hi = mid;
    }
    return lo > 0 && this.ends[lo - 1]! > offset;
  }
}

/** Keeps the first `max` changes in path order without holding more than twice that many. */
class FirstChanges {
  private items: FileChange[] = [];
  truncated = false;
  private readonly max: number;
  constructor(max: number) {
    this.max = max;
  }

  add(c: FileChange): void {
    this.items.push(c);
    if (this.items.length >= 2 * this.max + 1024) this.trim();
  }

  private trim(): void {
    this.items.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    if (this.items.length > this.max) {
      this.items.length = this.max;
      this.truncated = true;
    }
  }

  result(): ChangedFiles {
    this.trim();
    return { changes: this.items, truncated: this.truncated };
  }
}

function sameChainPrefix(old: DiskChain, now: DiskChain): boolean {
  if (resolve(old.base) !== resolve(now.base) || old.baseFormat !== now.baseFormat) return false;
  if (old.layers.length > now.layers.length) return false;
  return old.layers.every((l, i) => resolve(l) === resolve(now.layers[i]!));
}

type Task =
  | { kind: 'compare'; path: string; oldIno: number | undefined; newIno: number | undefined }
  | { kind: 'subtree'; side: 'old' | 'new'; path: string; dir: Inode };

/**
 * The files that differ between the filesystem on `old` and on `now`, as guest paths under
 * `mountPoint`, sorted by path. Runs in this process on hostile bytes: the host agent calls
 * changedFilesIsolated, which runs this in a capped child process.
 *
 * A path only in `now` is added, only in `old` deleted; in both, modified when it is another
 * inode, when the inode's record differs other than in its access time, or when its contents
 * (data, extent tree, symlink target, extended attribute block) differ. The root itself is not
 * listed.
 */
export function changedFiles(old: DiskChain, now: DiskChain, options: ChangedFilesOptions): ChangedFiles {
  if (!Number.isSafeInteger(options.max) || options.max < 0) throw new Error(`invalid max ${options.max}`);
  const oldChain = openChain(old);
  let nowChain: ReturnType<typeof openChain> | undefined;
  try {
    nowChain = openChain(now);
    const upper = sameChainPrefix(old, now) ? nowChain.layers.slice(old.layers.length) : undefined;
    const map = new UpperMap(upper, oldChain.size, nowChain.size);
    const budget = new Budget(
      WORK_BUDGET,
      options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs,
    );
    return new Comparison(new Ext4(oldChain, budget), new Ext4(nowChain, budget), map, options).run();
  } finally {
    oldChain.close();
    nowChain?.close();
  }
}

class Comparison {
  private readonly out: FirstChanges;
  private readonly stack: Task[] = [];
  private readonly visitedOld = new Set<number>();
  private readonly visitedNew = new Set<number>();
  private readonly prefix: string;
  private readonly oldFs: Ext4;
  private readonly newFs: Ext4;
  private readonly map: UpperMap;
  private readonly options: ChangedFilesOptions;

  constructor(oldFs: Ext4, newFs: Ext4, map: UpperMap, options: ChangedFilesOptions) {
    this.oldFs = oldFs;
    this.newFs = newFs;
    this.map = map;
    this.options = options;
    this.out = new FirstChanges(options.max);
    this.prefix = options.mountPoint.replace(/\/+$/, '');
  }

  run(): ChangedFiles {
    const ROOT = 2;
    this.compareDirs('', this.oldFs.readInode(ROOT), this.newFs.readInode(ROOT));
    for (let task = this.stack.pop(); task; task = this.stack.pop()) {
      if (task.kind === 'compare') this.compare(task.path, task.oldIno, task.newIno);
      else this.subtree(task.side, task.path, task.dir);
    }
    return this.out.result();
  }

  private report(path: string, change: FileChange['change'], inode: Inode): void {
    this.out.add({ disk: this.options.disk, path: this.prefix + path, change, type: inode.type });
  }

  private child(path: string, name: string): string {
    const p = `${path}/${Buffer.from(name, 'latin1').toString('utf8')}`;
    if (p.length > MAX_PATH_CHARS)
      throw new Error(`a path in the filesystem is longer than ${MAX_PATH_CHARS} characters`);
    return p;
  }

  /** Whether bytes [offset, offset + length) may read differently: held by an upper layer, or replaced from either journal. */
  private touched(offset: number, length: number): boolean {
    if (this.map.touched(offset, length)) return true;
    for (const fs of [this.oldFs, this.newFs]) {
      const first = Math.floor(offset / fs.blockSize);
      if (fs.journaled(first, Math.ceil((offset + length) / fs.blockSize) - first)) return true;
    }
    return false;
  }

  /** Reads inode `ino` of the new filesystem, or takes the old one's record when no upper layer holds its bytes. */
  private newInode(ino: number, old: Inode | undefined): Inode {
    if (old && old.ino === ino) {
      const location = this.newFs.inodeLocation(ino);
      if (location === old.location && !this.touched(location, old.raw.length)) return old;
    }
    return this.newFs.readInode(ino);
  }

  private compare(path: string, oldIno: number | undefined, newIno: number | undefined): void {
    const o = oldIno === undefined ? undefined : this.oldFs.readInode(oldIno);
    const n = newIno === undefined ? undefined : this.newInode(newIno, o);
    if (!o) {
      this.report(path, 'added', n!);
      if (n!.type === 'directory') this.stack.push({ kind: 'subtree', side: 'new', path, dir: n! });
      return;
    }
    if (!n) {
      this.report(path, 'deleted', o);
      if (o.type === 'directory') this.stack.push({ kind: 'subtree', side: 'old', path, dir: o });
      return;
    }
    const modified =
      o.ino !== n.ino ||
      (o !== n && !sameRecord(o.raw, n.raw)) ||
      (o.type !== 'directory' && !this.sameContents(o));
    if (modified) this.report(path, 'modified', n);
    if (o.type === 'directory' && n.type === 'directory') this.compareDirs(path, o, n);
    else if (o.type === 'directory') this.stack.push({ kind: 'subtree', side: 'old', path, dir: o });
    else if (n.type === 'directory') this.stack.push({ kind: 'subtree', side: 'new', path, dir: n });
  }

  /** Queues the comparison of each name in either directory. */
  private compareDirs(path: string, o: Inode, n: Inode): void {
    // A directory met twice (a hard-linked directory, a loop) is walked once.
    if (this.visitedOld.has(o.ino) || this.visitedNew.has(n.ino)) return;
    this.visitedOld.add(o.ino);
    this.visitedNew.add(n.ino);
    let untouched = o === n;
    const oldEntries = this.oldFs.readDir(o, (block) => {
      if (untouched && this.touched(block * this.oldFs.blockSize, this.oldFs.blockSize)) untouched = false;
    });
    const newEntries = untouched ? oldEntries : this.newFs.readDir(n);
    const names = new Set([...oldEntries.keys(), ...newEntries.keys()]);
    for (const name of names) {
      this.stack.push({
        kind: 'compare',
        path: this.child(path, name),
        oldIno: oldEntries.get(name),
        newIno: newEntries.get(name),
      });
    }
  }

  /** Lists everything under a directory that is only on one side, as added or deleted. */
  private subtree(side: 'old' | 'new', path: string, dir: Inode): void {
    const fs = side === 'old' ? this.oldFs : this.newFs;
    const visited = side === 'old' ? this.visitedOld : this.visitedNew;
    if (visited.has(dir.ino)) return;
    visited.add(dir.ino);
    for (const [name, ino] of fs.readDir(dir)) {
      const inode = fs.readInode(ino);
      const p = this.child(path, name);
      this.report(p, side === 'old' ? 'deleted' : 'added', inode);
      if (inode.type === 'directory') this.stack.push({ kind: 'subtree', side, path: p, dir: inode });
    }
  }

  /**
   * Whether two inodes with the same record hold the same bytes: their trees (extent or
   * indirect blocks), data and extended attribute block are compared wherever an upper layer
   * holds them, and taken as equal elsewhere.
   */
  private sameContents(o: Inode): boolean {
    const bs = this.oldFs.blockSize;
    const xattr = this.oldFs.xattrBlock(o);
    if (xattr !== 0 && !this.sameBlocks(xattr, 1)) return false;
    if (this.oldFs.hasNoBlocks(o)) return true;
    let same = true;
    try {
      this.oldFs.mapBlocks(
        o,
        (e) => {
          // Unwritten extents read as zeros in both, since the trees are the same.
          if (
            !e.unwritten &&
            this.touched(e.physical * bs, e.count * bs) &&
            !this.sameBlocks(e.physical, e.count)
          ) {
            same = false;
            throw DIFFERS;
          }
        },
        (block) => {
          if (!this.sameBlocks(block, 1)) {
            same = false;
            throw DIFFERS;
          }
        },
      );
    } catch (e) {
      if (e !== DIFFERS) throw e;
    }
    return same;
  }

  /** Whether `count` blocks from `first` read the same on both disks. */
  private sameBlocks(first: number, count: number): boolean {
    const bs = this.oldFs.blockSize;
    const perChunk = Math.max(1, Math.floor(COMPARE_CHUNK / bs));
    for (let b = first; b < first + count; b += perChunk) {
      const k = Math.min(perChunk, first + count - b);
      if (!this.touched(b * bs, k * bs)) continue;
      if (!this.oldFs.readBlocks(b, k).equals(this.newFs.readBlocks(b, k))) return false;
    }
    return true;
  }
}
