/**
 * A read-only ext4 (and ext2/3) reader over a BlockReader: enough to walk directories and
 * compare inodes and file contents, nothing that writes.
 *
 * The filesystem is the guest's: every field may be a lie. Offsets are checked against the
 * filesystem and the disk, tree depths and entry counts are bounded, and all the reads of one
 * walk share a work budget, so a crafted filesystem ends in an Error instead of a hang or an
 * unbounded allocation.
 */
import { type JournalCopy, replayJournal } from './journal.ts';
import type { BlockReader } from './qcow2.ts';

/** The kernel's own bound on extent tree depth (EXT4_MAX_EXTENT_DEPTH). */
const MAX_EXTENT_DEPTH = 5;
/** More names than this in one directory is refused (memory: a Map entry each). */
export const MAX_DIR_ENTRIES = 1_000_000;
/** Inode table and tree blocks kept in memory. */
const BLOCK_CACHE_BYTES = 32 * 1024 * 1024;

const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_RECOVER = 0x4;
const INCOMPAT_JOURNAL_DEV = 0x8;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_EXTENTS = 0x40;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_MMP = 0x100;
const INCOMPAT_FLEX_BG = 0x200;
const INCOMPAT_EA_INODE = 0x400;
const INCOMPAT_DIRDATA = 0x1000;
const INCOMPAT_CSUM_SEED = 0x2000;
const INCOMPAT_LARGEDIR = 0x4000;
const INCOMPAT_INLINE_DATA = 0x8000;
const INCOMPAT_ENCRYPT = 0x10000;
const INCOMPAT_CASEFOLD = 0x20000;
/** Features that change nothing this reader reads (or, RECOVER, are dealt with by the caller's reading of a possibly stale image). */
const INCOMPAT_KNOWN =
  INCOMPAT_FILETYPE |
  INCOMPAT_RECOVER |
  INCOMPAT_EXTENTS |
  INCOMPAT_64BIT |
  INCOMPAT_MMP |
  INCOMPAT_FLEX_BG |
  INCOMPAT_EA_INODE |
  INCOMPAT_CSUM_SEED |
  INCOMPAT_LARGEDIR |
  INCOMPAT_INLINE_DATA |
  INCOMPAT_ENCRYPT |
  INCOMPAT_CASEFOLD;

const COMPAT_HAS_JOURNAL = 0x4;
const EXT4_EXTENTS_FL = 0x80000;
const EXT4_INLINE_DATA_FL = 0x10000000;

export type FileType = 'file' | 'directory' | 'symlink' | 'other';

/** Counts the work of one walk: every block read and directory entry parsed spends from it. */
export class Budget {
  private left: number;
  private calls = 0;
  private readonly deadline: number | undefined;
  /** `deadline`: a Date.now() value after which the walk stops too. */
  constructor(left: number, deadline?: number) {
    this.left = left;
    this.deadline = deadline;
  }
  spend(n = 1): void {
    this.left -= n;
    if (this.left < 0)
      throw new Error('the filesystem needs more work to walk than allowed (too large, or crafted)');
    if (this.deadline !== undefined && (++this.calls & 1023) === 0 && Date.now() > this.deadline)
      throw new Error('the filesystem took longer to walk than allowed');
  }
}

export interface Inode {
  ino: number;
  /** Where the record is on the disk, in bytes. */
  location: number;
  raw: Buffer;
  mode: number;
  type: FileType;
  flags: number;
}

/** A run of a file's blocks: logical block `logical` onwards is at physical `physical`, `count` blocks. */
export interface Extent {
  logical: number;
  physical: number;
  count: number;
  /** Allocated but never written: reads as zeros whatever the blocks hold. */
  unwritten: boolean;
}

export class Ext4 {
  readonly blockSize: number;
  readonly inodeSize: number;
  readonly inodesCount: number;
  readonly blocksCount: number;
  readonly inodesPerGroup: number;
  readonly groupCount: number;
  readonly incompat: number;
  private readonly descSize: number;
  private readonly gdtBlock: number;
  private readonly inodeTables: number[] = [];
  private readonly cache = new Map<number, Buffer>();
  private readonly cacheMax: number;
  /** Blocks with a newer committed copy in the journal, and (sorted) their numbers. */
  private journal = new Map<number, JournalCopy>();
  private journaledBlocks: number[] = [];

  readonly dev: BlockReader;
  readonly budget: Budget;

  constructor(dev: BlockReader, budget: Budget) {
    this.dev = dev;
    this.budget = budget;
    const sb = dev.read(1024, 1024);
    if (sb.readUInt16LE(0x38) !== 0xef53)
      throw new Error('not an ext2/3/4 filesystem (bad superblock magic)');
    const logBlockSize = sb.readUInt32LE(0x18);
    if (logBlockSize > 6) throw new Error(`ext4: block size 2^${10 + logBlockSize} is not supported`);
    this.blockSize = 1024 << logBlockSize;
    const rev = sb.readUInt32LE(0x4c);
    this.inodeSize = rev === 0 ? 128 : sb.readUInt16LE(0x58);
    if (
      this.inodeSize < 128 ||
      this.inodeSize > this.blockSize ||
      (this.inodeSize & (this.inodeSize - 1)) !== 0
    )
      throw new Error(`ext4: inode size ${this.inodeSize} is invalid`);
    this.incompat = rev === 0 ? 0 : sb.readUInt32LE(0x60);
    if (this.incompat & INCOMPAT_JOURNAL_DEV)
      throw new Error('ext4: this is an external journal device, not a filesystem');
    if (this.incompat & INCOMPAT_META_BG) throw new Error('ext4: the meta_bg feature is not supported');
    if (this.incompat & INCOMPAT_DIRDATA) throw new Error('ext4: the dirdata feature is not supported');
    const unknown = this.incompat & ~INCOMPAT_KNOWN;
    if (unknown) throw new Error(`ext4: unknown incompatible features 0x${unknown.toString(16)}`);
    const is64 = (this.incompat & INCOMPAT_64BIT) !== 0;
    this.descSize = is64 ? sb.readUInt16LE(0xfe) : 32;
    if (this.descSize < 32 || this.descSize > 1024 || (this.descSize & (this.descSize - 1)) !== 0)
      throw new Error(`ext4: group descriptor size ${this.descSize} is invalid`);
    this.blocksCount = sb.readUInt32LE(0x04) + (is64 ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
    this.inodesCount = sb.readUInt32LE(0x00);
    this.inodesPerGroup = sb.readUInt32LE(0x28);
    const blocksPerGroup = sb.readUInt32LE(0x20);
    const firstDataBlock = sb.readUInt32LE(0x14);
    if (blocksPerGroup === 0 || this.inodesPerGroup === 0 || this.inodesPerGroup > this.blockSize * 8)
      throw new Error('ext4: blocks or inodes per group is invalid');
    if (this.blocksCount * this.blockSize > dev.size + this.blockSize)
      throw new Error(
        `ext4: the filesystem (${this.blocksCount} blocks of ${this.blockSize}) is larger than its disk (${dev.size} bytes)`,
      );
    this.groupCount = Math.ceil((this.blocksCount - firstDataBlock) / blocksPerGroup);
    if (this.groupCount < 1 || this.inodesCount > this.groupCount * this.inodesPerGroup)
      throw new Error('ext4: inode count does not match the groups');
    this.gdtBlock = firstDataBlock + 1;
    this.cacheMax = Math.max(16, Math.floor(BLOCK_CACHE_BYTES / this.blockSize));
    // The group descriptor table, whole: groups are bounded by the disk's size checked above.
    const gdt = this.readBlocks(this.gdtBlock, Math.ceil((this.groupCount * this.descSize) / this.blockSize));
    for (let g = 0; g < this.groupCount; g++) {
      const d = g * this.descSize;
      const lo = gdt.readUInt32LE(d + 0x08);
      const hi = this.descSize >= 64 ? gdt.readUInt32LE(d + 0x28) : 0;
      this.inodeTables.push(lo + hi * 2 ** 32);
    }
    // A filesystem that was mounted (a live VM's) has its last transactions in the journal:
    // the kernel replays them at mount, and so does this reader, in memory.
    const journalInode = sb.readUInt32LE(0xe0);
    if (this.incompat & INCOMPAT_RECOVER) {
      if (!(sb.readUInt32LE(0x5c) & COMPAT_HAS_JOURNAL) || journalInode === 0)
        throw new Error(
          'ext4: the filesystem needs recovery from an external journal, which is not supported',
        );
      this.journal = this.loadJournal(journalInode);
      this.journaledBlocks = [...this.journal.keys()].sort((a, b) => a - b);
      // Cached blocks were read without the journal.
      this.cache.clear();
    }
  }

  private loadJournal(ino: number): Map<number, JournalCopy> {
    const inode = this.readInode(ino);
    const extents: Extent[] = [];
    this.mapBlocks(inode, (e) => {
      if (extents.length > 0 && e.logical < extents[extents.length - 1]!.logical)
        throw new Error('ext4: the journal file is not mapped in order');
      extents.push(e);
    });
    const journalBlocks = Math.ceil(this.size(inode) / this.blockSize);
    return replayJournal({
      blockSize: this.blockSize,
      blocksCount: this.blocksCount,
      journalBlocks,
      rawBlock: (b) => this.readBlocks(b, 1),
      journalBlock: (i) => {
        let lo = 0;
        let hi = extents.length;
        while (lo < hi) {
          const mid = (lo + hi) >>> 1;
          if (extents[mid]!.logical <= i) lo = mid + 1;
          else hi = mid;
        }
        const e = extents[lo - 1];
        return e && !e.unwritten && i < e.logical + e.count ? e.physical + (i - e.logical) : 0;
      },
    });
  }

  /** Whether any of `count` blocks from `first` reads from the journal rather than its place. */
  journaled(first: number, count: number): boolean {
    const b = this.journaledBlocks;
    let lo = 0;
    let hi = b.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (b[mid]! < first) lo = mid + 1;
      else hi = mid;
    }
    return lo < b.length && b[lo]! < first + count;
  }

  /** Physical block `block`, whole; throws if it is outside the filesystem. */
  block(block: number, cache = false): Buffer {
    if (cache) {
      const hit = this.cache.get(block);
      if (hit) return hit;
    }
    const b = this.readBlocks(block, 1);
    if (cache) {
      if (this.cache.size >= this.cacheMax) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(block, b);
    }
    return b;
  }

  readBlocks(first: number, count: number): Buffer {
    if (!Number.isSafeInteger(first) || first < 0 || count < 0 || first + count > this.blocksCount)
      throw new Error(`ext4: block ${first} (+${count}) is outside the filesystem`);
    this.budget.spend(count);
    const bytes = this.dev.read(first * this.blockSize, count * this.blockSize);
    if (this.journal.size > 0 && this.journaled(first, count)) {
      for (let i = 0; i < count; i++) {
        const copy = this.journal.get(first + i);
        if (!copy) continue;
        const at = i * this.blockSize;
        this.dev.read(copy.from * this.blockSize, this.blockSize).copy(bytes, at);
        if (copy.escaped) bytes.writeUInt32BE(0xc03b3998, at);
      }
    }
    return bytes;
  }

  /** Where inode `ino`'s record is on the disk, in bytes. */
  inodeLocation(ino: number): number {
    if (!Number.isSafeInteger(ino) || ino < 1 || ino > this.inodesCount)
      throw new Error(`ext4: inode number ${ino} is out of range`);
    const group = Math.floor((ino - 1) / this.inodesPerGroup);
    const index = (ino - 1) % this.inodesPerGroup;
    const table = this.inodeTables[group]!;
    return table * this.blockSize + index * this.inodeSize;
  }

  readInode(ino: number): Inode {
    const location = this.inodeLocation(ino);
    const block = Math.floor(location / this.blockSize);
    const raw = this.block(block, true).subarray(
      location % this.blockSize,
      (location % this.blockSize) + this.inodeSize,
    );
    const mode = raw.readUInt16LE(0);
    return { ino, location, raw, mode, type: fileType(mode), flags: raw.readUInt32LE(0x20) };
  }

  /** The file's size in bytes. */
  size(inode: Inode): number {
    return inode.raw.readUInt32LE(0x04) + inode.raw.readUInt32LE(0x6c) * 2 ** 32;
  }

  /** The block holding extended attributes outside the inode, or 0. */
  xattrBlock(inode: Inode): number {
    return inode.raw.readUInt32LE(0x68) + inode.raw.readUInt16LE(0x76) * 2 ** 32;
  }

  /** True when the inode's bytes have no blocks behind them (inline data, fast symlinks, devices). */
  hasNoBlocks(inode: Inode): boolean {
    if (inode.flags & EXT4_INLINE_DATA_FL) return true;
    if (inode.type === 'other') return true;
    if (inode.type === 'symlink' && !(inode.flags & EXT4_EXTENTS_FL)) {
      // A fast symlink keeps its target in i_block; a slow one has a block (and i_blocks > 0).
      return this.size(inode) < 60;
    }
    return false;
  }

  /**
   * Calls `extent` for each mapped run of the inode's blocks in logical order (holes are
   * absent), and `node` for each tree block read on the way (extent index/leaf blocks,
   * indirect blocks), before the extents it holds.
   */
  mapBlocks(inode: Inode, extent: (e: Extent) => void, node: (block: number) => void = () => {}): void {
    if (this.hasNoBlocks(inode)) return;
    const iblock = inode.raw.subarray(0x28, 0x28 + 60);
    if (inode.flags & EXT4_EXTENTS_FL) this.walkExtents(iblock, MAX_EXTENT_DEPTH + 1, extent, node);
    else this.walkBlockMap(iblock, extent, node);
  }

  private walkExtents(
    nodeBytes: Buffer,
    depthLeft: number,
    extent: (e: Extent) => void,
    node: (block: number) => void,
  ): void {
    if (nodeBytes.readUInt16LE(0) !== 0xf30a) throw new Error('ext4: bad extent header magic');
    const entries = nodeBytes.readUInt16LE(2);
    const depth = nodeBytes.readUInt16LE(6);
    if (depth >= depthLeft || depth > MAX_EXTENT_DEPTH) throw new Error('ext4: extent tree too deep');
    if (12 + entries * 12 > nodeBytes.length) throw new Error('ext4: extent node has more entries than fit');
    this.budget.spend(entries);
    for (let i = 0; i < entries; i++) {
      const e = 12 + i * 12;
      if (depth === 0) {
        const len = nodeBytes.readUInt16LE(e + 4);
        const unwritten = len > 32768;
        const count = unwritten ? len - 32768 : len;
        const physical = nodeBytes.readUInt16LE(e + 6) * 2 ** 32 + nodeBytes.readUInt32LE(e + 8);
        if (count === 0) continue;
        if (physical + count > this.blocksCount)
          throw new Error('ext4: extent points outside the filesystem');
        extent({ logical: nodeBytes.readUInt32LE(e), physical, count, unwritten });
      } else {
        const child = nodeBytes.readUInt32LE(e + 4) + nodeBytes.readUInt16LE(e + 8) * 2 ** 32;
        node(child);
        this.walkExtents(this.block(child, true), depth, extent, node);
      }
    }
  }

  private walkBlockMap(iblock: Buffer, extent: (e: Extent) => void, node: (block: number) => void): void {
    const perBlock = this.blockSize / 4;
    let run: Extent | undefined;
    const emit = (logical: number, physical: number) => {
      if (physical >= this.blocksCount) throw new Error('ext4: block map points outside the filesystem');
      if (run && run.logical + run.count === logical && run.physical + run.count === physical) run.count++;
      else {
        if (run) extent(run);
        run = { logical, physical, count: 1, unwritten: false };
      }
    };
    const indirect = (block: number, level: number, logical: number) => {
      node(block);
      const b = this.block(block);
      this.budget.spend(perBlock);
      const span = perBlock ** (level - 1);
      for (let i = 0; i < perBlock; i++) {
        const p = b.readUInt32LE(i * 4);
        if (p === 0) continue;
        if (level === 1) emit(logical + i, p);
        else indirect(p, level - 1, logical + i * span);
      }
    };
    for (let i = 0; i < 12; i++) {
      const p = iblock.readUInt32LE(i * 4);
      if (p !== 0) emit(i, p);
    }
    let logical = 12;
    for (let level = 1; level <= 3; level++) {
      const p = iblock.readUInt32LE((11 + level) * 4);
      if (p !== 0) indirect(p, level, logical);
      logical += perBlock ** level;
    }
    if (run) extent(run);
  }

  /**
   * The names in directory `inode` (bytes as latin1 strings, without `.` and `..`) and the
   * inode each names. `blocks` receives every block read (tree and entries).
   */
  readDir(inode: Inode, blocks?: (block: number) => void): Map<string, number> {
    const entries = new Map<string, number>();
    if (inode.flags & EXT4_INLINE_DATA_FL) {
      // The first 4 bytes of i_block are the parent's inode; entries follow, and may go on in
      // the system.data extended attribute.
      this.parseDirBlock(inode.raw.subarray(0x28 + 4, 0x28 + 60), entries);
      const more = this.inlineXattr(inode);
      if (more && more.length > 0) this.parseDirBlock(more, entries);
      return entries;
    }
    const size = this.size(inode);
    const lastBlock = Math.ceil(size / this.blockSize);
    this.mapBlocks(
      inode,
      (e) => {
        if (e.unwritten) return;
        const count = Math.min(e.count, Math.max(0, lastBlock - e.logical));
        for (let i = 0; i < count; i++) {
          blocks?.(e.physical + i);
          this.parseDirBlock(this.block(e.physical + i), entries);
        }
      },
      blocks,
    );
    return entries;
  }

  private parseDirBlock(b: Buffer, entries: Map<string, number>): void {
    const filetype = (this.incompat & INCOMPAT_FILETYPE) !== 0;
    let off = 0;
    while (off + 8 <= b.length) {
      const ino = b.readUInt32LE(off);
      let recLen = b.readUInt16LE(off + 4);
      if (b.length >= 65536)
        recLen = recLen === 65535 || recLen === 0 ? b.length : (recLen & 65532) | ((recLen & 3) << 16);
      const nameLen = filetype ? b[off + 6]! : b.readUInt16LE(off + 6);
      if (recLen < 8 || recLen % 4 !== 0 || off + recLen > b.length || 8 + nameLen > recLen)
        throw new Error('ext4: corrupt directory entry');
      this.budget.spend();
      if (ino !== 0) {
        const name = b.toString('latin1', off + 8, off + 8 + nameLen);
        if (name !== '.' && name !== '..' && nameLen > 0) {
          if (ino > this.inodesCount)
            throw new Error(`ext4: directory entry names inode ${ino}, out of range`);
          entries.set(name, ino);
          if (entries.size > MAX_DIR_ENTRIES)
            throw new Error(`ext4: a directory has more than ${MAX_DIR_ENTRIES} entries`);
        }
      }
      off += recLen;
    }
  }

  /** The value of the in-inode `system.data` attribute (the rest of inline data), if any. */
  private inlineXattr(inode: Inode): Buffer | undefined {
    if (this.inodeSize <= 128) return undefined;
    const extra = inode.raw.readUInt16LE(0x80);
    const start = 128 + extra;
    if (extra % 4 !== 0 || start + 4 > this.inodeSize || inode.raw.readUInt32LE(start) !== 0xea020000)
      return undefined;
    const first = start + 4;
    let off = first;
    while (off + 16 <= this.inodeSize && inode.raw.readUInt32LE(off) !== 0) {
      const nameLen = inode.raw[off]!;
      const index = inode.raw[off + 1]!;
      const valueOffs = inode.raw.readUInt16LE(off + 2);
      const valueSize = inode.raw.readUInt32LE(off + 8);
      if (off + 16 + nameLen > this.inodeSize) return undefined;
      const name = inode.raw.toString('latin1', off + 16, off + 16 + nameLen);
      if (index === 7 && name === 'data') {
        if (first + valueOffs + valueSize > this.inodeSize)
          throw new Error('ext4: inline data attribute out of bounds');
        return inode.raw.subarray(first + valueOffs, first + valueOffs + valueSize);
      }
      off += (16 + nameLen + 3) & ~3;
    }
    return undefined;
  }
}

export function fileType(mode: number): FileType {
  switch (mode & 0xf000) {
    case 0x8000:
      return 'file';
    case 0x4000:
      return 'directory';
    case 0xa000:
      return 'symlink';
    default:
      return 'other';
  }
}

/**
 * Whether two inode records say the same, leaving out what reading a file changes: the
 * access time (i_atime, i_atime_extra) and the checksums that cover it.
 */
export function sameRecord(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) return false;
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  for (const r of [x, y]) {
    r.fill(0, 0x08, 0x0c); // i_atime
    r.fill(0, 0x7c, 0x7e); // l_i_checksum_lo
  }
  if (a.length > 128) {
    const extra = Math.min(a.readUInt16LE(0x80), b.readUInt16LE(0x80));
    for (const r of [x, y]) {
      if (extra >= 4) r.fill(0, 0x82, 0x84); // i_checksum_hi
      if (extra >= 0x10) r.fill(0, 0x8c, 0x90); // i_atime_extra
    }
  }
  return x.equals(y);
}
