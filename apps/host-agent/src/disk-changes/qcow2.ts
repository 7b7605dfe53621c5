/**
 * A read-only view of a VM disk as QEMU's guest sees it: a raw base file under zero or more
 * qcow2 layers, read without QEMU (no qemu-nbd, no loop mount), so the host agent can look at
 * a snapshot's filesystems while the VM runs.
 *
 * Every byte of every file is treated as hostile: the layers are written by a QEMU that a guest
 * may have taken over. Each offset is checked against the file's size and the disk's virtual
 * size, tables are bounded, and a feature this reader does not implement is refused by name
 * rather than guessed at.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

/** A disk as a chain of files, bottom to top. The chain given is authoritative: each layer's own backing file name is ignored. */
export interface DiskChain {
  /** The raw file at the bottom (an image's rootfs, a data volume). */
  base: string;
  baseFormat: 'raw';
  /** qcow2 files, bottom to top; each one's backing is the element before it. */
  layers: string[];
}

export interface BlockReader {
  /** The disk's size in bytes, as the guest sees it (the top layer's virtual size). */
  readonly size: number;
  /** Bytes [offset, offset + length) of the disk; throws if the range is outside it. */
  read(offset: number, length: number): Buffer;
  close(): void;
}

/** qcow2's own limits (QEMU's block/qcow2.h): 512 B to 2 MiB clusters, an L1 table of at most 32 MiB. */
const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;
const MAX_L1_BYTES = 32 * 1024 * 1024;
/** L2 tables kept in memory per layer; a lookup that misses reads one cluster. */
const L2_CACHE_BYTES = 4 * 1024 * 1024;
/** The largest single read: callers read blocks and chunks, never whole disks. */
const MAX_READ_BYTES = 64 * 1024 * 1024;

/** Incompatible feature bits (qcow2 v3) and what this reader does with them. */
const INCOMPAT_DIRTY = 1n << 0n; // refcounts may be stale: irrelevant to reading
const INCOMPAT_CORRUPT = 1n << 1n;
const INCOMPAT_EXTERNAL_DATA = 1n << 2n;
const INCOMPAT_COMPRESSION_TYPE = 1n << 3n; // only matters for compressed clusters, which are refused
const INCOMPAT_EXTENDED_L2 = 1n << 4n;

/** A chain's path `fd:N` names a descriptor this process inherited open (the isolated worker's). */
const INHERITED = /^fd:(\d+)$/;

class File {
  readonly fd: number;
  readonly size: number;
  readonly path: string;
  private readonly owned: boolean;
  constructor(path: string) {
    this.path = path;
    const inherited = INHERITED.exec(path);
    this.owned = !inherited;
    this.fd = inherited ? Number(inherited[1]) : openSync(path, 'r');
    try {
      const st = fstatSync(this.fd);
      if (!st.isFile()) throw new Error(`${path} is not a regular file`);
      this.size = st.size;
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Reads into `dst` at `position`; what lies past the end of the file reads as zeros, as QEMU's file driver does. */
  readInto(dst: Buffer, dstOffset: number, length: number, position: number): void {
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, dst, dstOffset + done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    if (done < length) dst.fill(0, dstOffset + done, dstOffset + length);
  }

  close(): void {
    // Inherited descriptors may back several files (a base both chains share); they close when the worker exits.
    if (this.owned) closeSync(this.fd);
  }
}

type Mapping = { kind: 'unallocated' } | { kind: 'zero' } | { kind: 'data'; hostOffset: number };

/** One qcow2 file: its header and the guest-to-host cluster mapping. */
export class Qcow2Layer {
  readonly file: File;
  readonly version: number;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly size: number;
  private readonly l1: Buffer;
  private readonly l1Size: number;
  private readonly l2Bits: number;
  private readonly l2Cache = new Map<number, Buffer>();
  private readonly l2CacheMax: number;

  constructor(path: string) {
    this.file = new File(path);
    try {
      const h = Buffer.alloc(112);
      this.file.readInto(h, 0, h.length, 0);
      const where = `qcow2 layer ${path}`;
      if (h.readUInt32BE(0) !== 0x514649fb) throw new Error(`${where}: not a qcow2 file (bad magic)`);
      this.version = h.readUInt32BE(4);
      if (this.version !== 2 && this.version !== 3)
        throw new Error(`${where}: qcow2 version ${this.version} is not supported (only 2 and 3)`);
      this.clusterBits = h.readUInt32BE(20);
      if (this.clusterBits < MIN_CLUSTER_BITS || this.clusterBits > MAX_CLUSTER_BITS)
        throw new Error(`${where}: cluster_bits ${this.clusterBits} is outside 9..21`);
      this.clusterSize = 2 ** this.clusterBits;
      const size = h.readBigUInt64BE(24);
      if (size > BigInt(Number.MAX_SAFE_INTEGER))
        throw new Error(`${where}: virtual size ${size} is too large`);
      this.size = Number(size);
      if (h.readUInt32BE(32) !== 0) throw new Error(`${where}: encrypted images are not supported`);
      if (this.version === 3) {
        const headerLength = h.readUInt32BE(100);
        if (headerLength < 104 || headerLength > this.clusterSize)
          throw new Error(`${where}: header_length ${headerLength} is invalid`);
        const incompat = h.readBigUInt64BE(72);
        if (incompat & INCOMPAT_CORRUPT) throw new Error(`${where}: the image is marked corrupt`);
        if (incompat & INCOMPAT_EXTERNAL_DATA)
          throw new Error(`${where}: external data files are not supported`);
        if (incompat & INCOMPAT_EXTENDED_L2)
          throw new Error(`${where}: extended L2 entries are not supported`);
        const unknown = incompat & ~(INCOMPAT_DIRTY | INCOMPAT_COMPRESSION_TYPE);
        if (unknown) throw new Error(`${where}: unknown incompatible features 0x${unknown.toString(16)}`);
      }
      this.l2Bits = this.clusterBits - 3;
      this.l1Size = h.readUInt32BE(36);
      const l1Offset = h.readBigUInt64BE(40);
      const l1Bytes = this.l1Size * 8;
      if (l1Bytes > MAX_L1_BYTES)
        throw new Error(`${where}: L1 table of ${this.l1Size} entries is too large`);
      if (this.l1Size > 0) {
        if (l1Offset % BigInt(this.clusterSize) !== 0n || l1Offset + BigInt(l1Bytes) > BigInt(this.file.size))
          throw new Error(`${where}: L1 table offset ${l1Offset} is outside the file or unaligned`);
      }
      this.l1 = Buffer.alloc(l1Bytes);
      this.file.readInto(this.l1, 0, l1Bytes, Number(l1Offset));
      this.l2CacheMax = Math.max(4, Math.floor(L2_CACHE_BYTES / this.clusterSize));
    } catch (e) {
      this.file.close();
      throw e;
    }
  }

  /** The host offset of the L2 table for L1 index `i`, or 0 when there is none. */
  private l2Offset(i: number): number {
    if (i >= this.l1Size) return 0;
    const hi = this.l1.readUInt32BE(i * 8);
    const lo = this.l1.readUInt32BE(i * 8 + 4);
    // Bits 9-55 are the offset; bit 63 ("copied") does not matter to a reader; the rest are reserved.
    if (hi & 0x7f000000 || lo & 0x1ff)
      throw new Error(`qcow2 layer ${this.file.path}: L1 entry ${i} has reserved bits set`);
    const offset = (hi & 0x00ffffff) * 2 ** 32 + (lo >>> 0);
    if (offset === 0) return 0;
    if (offset % this.clusterSize !== 0 || offset + this.clusterSize > this.file.size)
      throw new Error(
        `qcow2 layer ${this.file.path}: L2 table offset ${offset} is outside the file or unaligned`,
      );
    return offset;
  }

  private l2Table(l1Index: number, offset: number): Buffer {
    const cached = this.l2Cache.get(l1Index);
    if (cached) {
      this.l2Cache.delete(l1Index);
      this.l2Cache.set(l1Index, cached);
      return cached;
    }
    const table = Buffer.alloc(this.clusterSize);
    this.file.readInto(table, 0, this.clusterSize, offset);
    if (this.l2Cache.size >= this.l2CacheMax) this.l2Cache.delete(this.l2Cache.keys().next().value!);
    this.l2Cache.set(l1Index, table);
    return table;
  }

  private decodeL2(table: Buffer, index: number): Mapping {
    const hi = table.readUInt32BE(index * 8);
    const lo = table.readUInt32BE(index * 8 + 4);
    const where = `qcow2 layer ${this.file.path}`;
    if (hi & 0x40000000) throw new Error(`${where}: compressed clusters are not supported`);
    if (hi & 0x3f000000 || lo & 0x1fe) throw new Error(`${where}: an L2 entry has reserved bits set`);
    const offset = (hi & 0x00ffffff) * 2 ** 32 + ((lo & ~0x1ff) >>> 0);
    if (lo & 1) {
      if (this.version < 3) throw new Error(`${where}: a zero cluster flag in a version 2 image`);
      return { kind: 'zero' };
    }
    if (offset === 0) return { kind: 'unallocated' };
    if (offset % this.clusterSize !== 0 || offset >= this.file.size)
      throw new Error(`${where}: a data cluster offset ${offset} is outside the file or unaligned`);
    return { kind: 'data', hostOffset: offset };
  }

  /** Where guest cluster `cluster` of this layer is. */
  lookup(cluster: number): Mapping {
    const l1Index = Math.floor(cluster / 2 ** this.l2Bits);
    const l2Offset = this.l2Offset(l1Index);
    if (l2Offset === 0) return { kind: 'unallocated' };
    return this.decodeL2(this.l2Table(l1Index, l2Offset), cluster % 2 ** this.l2Bits);
  }

  /**
   * Calls `range(start, end)` for each run of guest bytes this layer holds itself (data or zero
   * clusters), in increasing order. Returns false, having stopped, when more than `maxRuns`
   * runs were found. Reads each L2 table at most once, bypassing the cache.
   */
  allocated(range: (start: number, end: number) => void, maxRuns: number): boolean {
    let runStart = -1;
    let runEnd = -1;
    let runs = 0;
    // A well-formed image has no two L1 entries sharing a table, so it has at most this many.
    let tablesLeft = Math.floor(this.file.size / this.clusterSize) + 1;
    const table = Buffer.alloc(this.clusterSize);
    const entries = 2 ** this.l2Bits;
    for (let i = 0; i < this.l1Size; i++) {
      const offset = this.l2Offset(i);
      if (offset === 0) continue;
      if (--tablesLeft < 0)
        throw new Error(`qcow2 layer ${this.file.path}: more L2 tables than the file can hold`);
      this.file.readInto(table, 0, this.clusterSize, offset);
      for (let j = 0; j < entries; j++) {
        const start = (i * entries + j) * this.clusterSize;
        if (start >= this.size) break;
        if (this.decodeL2(table, j).kind === 'unallocated') continue;
        const end = Math.min(start + this.clusterSize, this.size);
        if (start === runEnd) {
          runEnd = end;
          continue;
        }
        if (runStart >= 0) {
          if (++runs > maxRuns) return false;
          range(runStart, runEnd);
        }
        runStart = start;
        runEnd = end;
      }
    }
    if (runStart >= 0) {
      if (++runs > maxRuns) return false;
      range(runStart, runEnd);
    }
    return true;
  }

  close(): void {
    this.file.close();
  }
}

/** A raw base under qcow2 layers, read as the guest sees it. */
export class Chain implements BlockReader {
  readonly size: number;
  private readonly base: File;
  readonly layers: Qcow2Layer[] = [];

  constructor(chain: DiskChain) {
    if (chain.baseFormat !== 'raw')
      throw new Error(`base format ${String(chain.baseFormat)} is not supported`);
    this.base = new File(chain.base);
    try {
      for (const path of chain.layers) this.layers.push(new Qcow2Layer(path));
    } catch (e) {
      this.close();
      throw e;
    }
    this.size = this.layers.length > 0 ? this.layers[this.layers.length - 1]!.size : this.base.size;
  }

  read(offset: number, length: number): Buffer {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0)
      throw new Error(`invalid disk read at ${offset} of ${length} bytes`);
    if (length > MAX_READ_BYTES) throw new Error(`a disk read of ${length} bytes is too large`);
    if (offset + length > this.size)
      throw new Error(
        `a disk read at ${offset} of ${length} bytes is past the end of the disk (${this.size} bytes)`,
      );
    const dst = Buffer.allocUnsafe(length);
    this.readLayer(this.layers.length - 1, offset, length, dst, 0);
    return dst;
  }

  private readLayer(index: number, offset: number, length: number, dst: Buffer, dstOffset: number): void {
    if (index < 0) {
      this.base.readInto(dst, dstOffset, length, offset);
      return;
    }
    const layer = this.layers[index]!;
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      if (pos >= layer.size) {
        // Past this layer's end (a layer below a grown one): zeros, as QEMU reads them.
        dst.fill(0, dstOffset + done, dstOffset + length);
        return;
      }
      const cluster = Math.floor(pos / layer.clusterSize);
      const inCluster = pos - cluster * layer.clusterSize;
      const n = Math.min(length - done, layer.clusterSize - inCluster, layer.size - pos);
      const m = layer.lookup(cluster);
      if (m.kind === 'data') layer.file.readInto(dst, dstOffset + done, n, m.hostOffset + inCluster);
      else if (m.kind === 'zero') dst.fill(0, dstOffset + done, dstOffset + done + n);
      else this.readLayer(index - 1, pos, n, dst, dstOffset + done);
      done += n;
    }
  }

  close(): void {
    for (const layer of this.layers) layer.close();
    this.base.close();
  }
}

export function openChain(chain: DiskChain): Chain {
  return new Chain(chain);
}
