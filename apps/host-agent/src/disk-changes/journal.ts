/**
 * The committed transactions in an ext4 filesystem's journal (jbd2), as the kernel would replay
 * them at the next mount: which filesystem blocks have a newer copy in the journal, and where.
 *
 * A snapshot of a running VM is a crash-consistent image: what the guest last committed may be
 * only in the journal, its final blocks written later or never. Reading such an image without
 * its journal shows an older filesystem; reading through this overlay shows what the guest saw.
 * The journal is the guest's: its walk is bounded by the journal's length, and every block
 * number is checked.
 */

const JBD2_MAGIC = 0xc03b3998;
const DESCRIPTOR = 1;
const COMMIT = 2;
const SUPERBLOCK_V1 = 3;
const SUPERBLOCK_V2 = 4;
const REVOKE = 5;

const FEATURE_REVOKE = 0x1;
const FEATURE_64BIT = 0x2;
const FEATURE_ASYNC_COMMIT = 0x4;
const FEATURE_CSUM_V2 = 0x8;
const FEATURE_CSUM_V3 = 0x10;
const FEATURE_FAST_COMMIT = 0x20;
const KNOWN = FEATURE_REVOKE | FEATURE_64BIT | FEATURE_ASYNC_COMMIT | FEATURE_CSUM_V2 | FEATURE_CSUM_V3;

const TAG_ESCAPE = 1;
const TAG_SAME_UUID = 2;
const TAG_LAST = 8;

/** Where the newest committed copy of a filesystem block is in the journal. */
export interface JournalCopy {
  /** The filesystem block holding it (inside the journal's file). */
  from: number;
  /** The block's first four bytes were the journal magic, stored zeroed: put them back. */
  escaped: boolean;
}

export interface JournalSource {
  blockSize: number;
  blocksCount: number;
  /** The journal file's logical block `i` as a filesystem block, or 0 for a hole. */
  journalBlock(i: number): number;
  /** Filesystem block `block` as it is on the disk, without any journal. */
  rawBlock(block: number): Buffer;
  /** The journal file's length in blocks. */
  journalBlocks: number;
}

/** Replays the journal's committed transactions into a map: filesystem block -> its newest copy. */
export function replayJournal(src: JournalSource): Map<number, JournalCopy> {
  const overlay = new Map<number, JournalCopy>();
  const read = (i: number) => {
    const b = src.journalBlock(i);
    if (b === 0) throw new Error(`ext4 journal: block ${i} of the journal is a hole`);
    return { block: b, bytes: src.rawBlock(b) };
  };
  const sb = read(0).bytes;
  const type = sb.readUInt32BE(4);
  if (sb.readUInt32BE(0) !== JBD2_MAGIC || (type !== SUPERBLOCK_V1 && type !== SUPERBLOCK_V2))
    throw new Error('ext4 journal: bad journal superblock');
  if (sb.readUInt32BE(0x0c) !== src.blockSize)
    throw new Error('ext4 journal: its block size is not the filesystem’s');
  const maxlen = sb.readUInt32BE(0x10);
  const first = sb.readUInt32BE(0x14);
  let sequence = sb.readUInt32BE(0x18);
  const start = sb.readUInt32BE(0x1c);
  if (start === 0) return overlay; // clean: nothing to replay
  const incompat = type === SUPERBLOCK_V2 ? sb.readUInt32BE(0x28) : 0;
  if (incompat & FEATURE_FAST_COMMIT) throw new Error('ext4 journal: fast commits are not supported');
  if (incompat & ~KNOWN)
    throw new Error(`ext4 journal: unknown features 0x${(incompat & ~KNOWN).toString(16)}`);
  if (maxlen > src.journalBlocks || first < 1 || first >= maxlen || start < first || start >= maxlen)
    throw new Error('ext4 journal: its bounds are invalid');
  const is64 = (incompat & FEATURE_64BIT) !== 0;
  const csum3 = (incompat & FEATURE_CSUM_V3) !== 0;
  const csum2 = (incompat & FEATURE_CSUM_V2) !== 0;
  const tagBytes = csum3 ? 16 : 12 + (csum2 ? 2 : 0) - (is64 ? 0 : 4);
  const tail = csum2 || csum3 ? 4 : 0;
  const next = (i: number) => (i + 1 >= maxlen ? first : i + 1);
  const fsBlock = (lo: number, hi: number) => {
    const b = lo + (is64 ? hi * 2 ** 32 : 0);
    if (b >= src.blocksCount) throw new Error(`ext4 journal: a logged block ${b} is outside the filesystem`);
    return b;
  };

  let pos = start;
  let pending: Array<[number, JournalCopy]> = [];
  let revoked: number[] = [];
  // Each step consumes at least one journal block: one lap of the journal at most.
  for (let budget = maxlen; budget > 0; ) {
    const { bytes } = read(pos);
    if (bytes.readUInt32BE(0) !== JBD2_MAGIC || bytes.readUInt32BE(8) !== sequence) break;
    const blockType = bytes.readUInt32BE(4);
    budget--;
    if (blockType === DESCRIPTOR) {
      let off = 12;
      for (;;) {
        if (off + tagBytes > src.blockSize - tail) break;
        const flags = csum3 ? bytes.readUInt32BE(off + 4) : bytes.readUInt16BE(off + 6);
        const block = fsBlock(bytes.readUInt32BE(off), is64 ? bytes.readUInt32BE(off + 8) : 0);
        pos = next(pos);
        if (--budget < 0) break;
        pending.push([block, { from: read(pos).block, escaped: (flags & TAG_ESCAPE) !== 0 }]);
        off += tagBytes + (flags & TAG_SAME_UUID ? 0 : 16);
        if (flags & TAG_LAST) break;
      }
    } else if (blockType === REVOKE) {
      const count = Math.min(bytes.readUInt32BE(12), src.blockSize - tail);
      const size = is64 ? 8 : 4;
      for (let off = 16; off + size <= count; off += size) {
        revoked.push(
          fsBlock(
            is64 ? bytes.readUInt32BE(off + 4) : bytes.readUInt32BE(off),
            is64 ? bytes.readUInt32BE(off) : 0,
          ),
        );
      }
    } else if (blockType === COMMIT) {
      // A revoke cancels the copies logged before it, up to its own transaction.
      for (const [block, copy] of pending) overlay.set(block, copy);
      for (const block of revoked) overlay.delete(block);
      pending = [];
      revoked = [];
      sequence = (sequence + 1) >>> 0;
    } else break;
    pos = next(pos);
  }
  return overlay;
}
