/**
 * SHA-256 digests of a sample of the regular files of an ext4 filesystem on a disk chain, read
 * with this package's own reader (ext4.ts), not the guest kernel's: a restore drill compares
 * them with what the restored guest says its files hold, so two independent readers of the same
 * bytes must agree.
 *
 * The filesystem is the guest's (a backup of what it wrote): the walk shares one work budget and
 * deadline, directories are visited once, and files above a size bound are left out, so a
 * crafted filesystem costs bounded work and ends in an Error or a shorter sample.
 */
import { createHash } from 'node:crypto';
import { Budget, Ext4, type Inode } from './ext4.ts';
import { type DiskChain, openChain } from './qcow2.ts';

export interface FileDigest {
  /** The guest path, under the mount point. */
  path: string;
  size: number;
  sha256: string;
}

export interface FileDigestsOptions {
  /** Where the guest mounts this filesystem (`/workspace` for the data volume). */
  mountPoint: string;
  /** At most this many files. */
  max: number;
  /** Regular files larger than this are left out of the sample (reading them is the drill's cost). */
  maxFileBytes: number;
  /** Give up (an Error) after this long. */
  timeoutMs?: number;
}

/** Blocks read plus entries parsed in one walk. */
const WORK_BUDGET = 50_000_000;
/** Longest guest path sampled; a deeper tree is a crafted one. */
const MAX_PATH_CHARS = 4096;
/** File contents are read this many bytes at a time (rounded to blocks). */
const READ_CHUNK = 1024 * 1024;
/** ext4 inline data: the file's bytes are in its inode, which this sample leaves out. */
const EXT4_INLINE_DATA_FL = 0x10000000;
const ROOT_INODE = 2;
/**
 * Names a shell command line and `sha256sum`'s output carry unchanged: a name with anything
 * else (a newline, a backslash, a control character, bytes that are not UTF-8) is skipped, so
 * the guest's answer for every sampled path is unambiguous.
 */
const PLAIN_NAME = /^[\x20-\x5b\x5d-\x7e\u00a0-\uffff]+$/u;

/**
 * The first `max` regular files of the filesystem on `chain`, in a depth-first walk that takes
 * each directory's names in byte order (so the same filesystem gives the same sample), with the
 * SHA-256 of their contents. Runs in this process on hostile bytes: the host agent calls
 * fileDigestsIsolated, which runs this in a capped child process.
 */
export function fileDigests(chain: DiskChain, options: FileDigestsOptions): FileDigest[] {
  if (!Number.isSafeInteger(options.max) || options.max < 0) throw new Error(`invalid max ${options.max}`);
  const disk = openChain(chain);
  try {
    const budget = new Budget(
      WORK_BUDGET,
      options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs,
    );
    const fs = new Ext4(disk, budget);
    const prefix = options.mountPoint.replace(/\/+$/, '');
    const out: FileDigest[] = [];
    const visited = new Set<number>([ROOT_INODE]);
    // Directories still to walk, the next one last; each with its names in byte order.
    const stack: Array<{ path: string; names: Array<[string, number]> }> = [
      { path: '', names: sortedEntries(fs, fs.readInode(ROOT_INODE)) },
    ];
    while (stack.length > 0 && out.length < options.max) {
      const top = stack[stack.length - 1]!;
      const next = top.names.pop();
      if (!next) {
        stack.pop();
        continue;
      }
      const [name, ino] = next;
      const decoded = Buffer.from(name, 'latin1').toString('utf8');
      // Not UTF-8 (decoding replaced bytes) or not plain: a path the guest's answer could garble.
      if (Buffer.from(decoded, 'utf8').toString('latin1') !== name || !PLAIN_NAME.test(decoded)) continue;
      const path = `${top.path}/${decoded}`;
      if (prefix.length + path.length > MAX_PATH_CHARS) continue;
      const inode = fs.readInode(ino);
      if (inode.type === 'directory') {
        // A directory linked twice (only a crafted filesystem has one) is walked once.
        if (visited.has(ino)) continue;
        visited.add(ino);
        stack.push({ path, names: sortedEntries(fs, inode) });
      } else if (inode.type === 'file' && !(inode.flags & EXT4_INLINE_DATA_FL)) {
        const size = fs.size(inode);
        if (size > options.maxFileBytes) continue;
        out.push({ path: prefix + path, size, sha256: contentDigest(fs, inode, size) });
      }
    }
    return out;
  } finally {
    disk.close();
  }
}

/** The directory's entries, last in byte order first (the walk pops them). */
function sortedEntries(fs: Ext4, dir: Inode): Array<[string, number]> {
  return [...fs.readDir(dir)].sort((a, b) => (a[0] < b[0] ? 1 : a[0] > b[0] ? -1 : 0));
}

/** SHA-256 of the file's first `size` bytes: its mapped blocks, zeros for holes and unwritten extents. */
function contentDigest(fs: Ext4, inode: Inode, size: number): string {
  const hash = createHash('sha256');
  let left = size;
  // The last block holds bytes past the file's end, which must not count.
  const feed = (b: Buffer) => {
    const part = b.length <= left ? b : b.subarray(0, left);
    hash.update(part);
    left -= part.length;
  };
  const bs = fs.blockSize;
  const step = Math.max(1, Math.floor(READ_CHUNK / bs));
  const blocks = Math.ceil(size / bs);
  let at = 0; // the next logical block to hash
  const zeros = (until: number) => {
    while (at < until) {
      const n = Math.min(until - at, step);
      feed(Buffer.alloc(n * bs));
      at += n;
    }
  };
  fs.mapBlocks(inode, (e) => {
    if (e.logical < at) throw new Error('ext4: a file maps a block twice, or out of order');
    if (e.logical >= blocks) return;
    zeros(e.logical);
    const count = Math.min(e.count, blocks - e.logical);
    if (e.unwritten) return zeros(at + count);
    for (let i = 0; i < count; i += step) {
      const n = Math.min(count - i, step);
      feed(fs.readBlocks(e.physical + i, n));
      at += n;
    }
  });
  zeros(blocks);
  return hash.digest('hex');
}
