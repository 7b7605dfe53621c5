/**
 * Chunk objects: `WBC1 | flags | nonce(12) | AES-256-GCM ciphertext | tag(16)`, sealed with
 * subkeys(K).chunkSeal, AAD = magic + flags + id. The id is HMAC-SHA256(subkeys(K).chunkId,
 * plaintext): equal content under one key has one id, so it is stored once, and the store learns
 * nothing from the name (a plain hash would let it confirm guesses of known content).
 *
 * Opening checks, in order: the header, the tag (nothing unauthenticated is decompressed), the
 * decompressed size (bounded, so a compression bomb costs at most CHUNK_SIZE), and last the
 * HMAC of the plaintext against the id the manifest lists, which catches an authentic object
 * stored under another chunk's name and a chunk sealed under the other key domain.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import { constants as zlib, zstdCompress, zstdDecompress } from 'node:zlib';
import {
  CHUNK_HEADER_BYTES,
  CHUNK_MAGIC,
  CHUNK_SIZE,
  DEFAULT_ZSTD_LEVEL,
  FLAG_ZSTD,
  MAX_CHUNK_OBJECT_BYTES,
  NONCE_BYTES,
  TAG_BYTES,
} from './constants.ts';
import type { Subkeys } from './keys.ts';
import { corrupt } from './object-io.ts';

// The async forms run on libuv's thread pool, so several chunks compress in parallel and the
// event loop stays free for the uploads.
const compress = promisify(zstdCompress);
const decompress = promisify(zstdDecompress);

export function chunkId(keys: Subkeys, plaintext: Buffer): string {
  return createHmac('sha256', keys.chunkId).update(plaintext).digest('hex');
}

/** Zeros to compare chunks with (read-only by convention: never handed out). */
const ZEROS = Buffer.alloc(CHUNK_SIZE);

/** True when every byte is zero: such a chunk is not stored (the restored file keeps a hole). */
export function isZero(buf: Buffer): boolean {
  // memcmp against zeros, in native code: a JS loop over a mostly-zero volume costs more.
  for (let at = 0; at < buf.length; at += CHUNK_SIZE) {
    const part = buf.subarray(at, Math.min(buf.length, at + CHUNK_SIZE));
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}

function aad(flags: number, id: string): Buffer {
  return Buffer.concat([CHUNK_MAGIC, Buffer.of(flags), Buffer.from(id, 'ascii')]);
}

export interface SealOptions {
  /** zstd level 1..19, or 0 to store chunks uncompressed. */
  zstdLevel?: number;
}

/** The object for a chunk whose id is `id` (= chunkId(keys, plaintext)). */
export async function sealChunk(
  keys: Subkeys,
  id: string,
  plaintext: Buffer,
  options: SealOptions = {},
): Promise<Buffer> {
  const level = options.zstdLevel ?? DEFAULT_ZSTD_LEVEL;
  let flags = 0;
  let body = plaintext;
  if (level > 0) {
    const packed = await compress(plaintext, {
      params: { [zlib.ZSTD_c_compressionLevel]: level },
      // One output buffer per chunk: zlib's 16 KiB default costs a callback and a copy per piece.
      chunkSize: CHUNK_SIZE,
    });
    // Incompressible data (already compressed files, encrypted data) is stored as it is, which
    // also bounds every chunk object by MAX_CHUNK_OBJECT_BYTES.
    if (packed.length < plaintext.length) {
      body = packed;
      flags |= FLAG_ZSTD;
    }
  }
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', keys.chunkSeal, nonce);
  cipher.setAAD(aad(flags, id));
  return Buffer.concat([
    CHUNK_MAGIC,
    Buffer.of(flags),
    nonce,
    cipher.update(body),
    cipher.final(),
    cipher.getAuthTag(),
  ]);
}

/** Where the chunk is opened, for the error messages. */
export interface ChunkContext {
  backupId: string;
  key: string;
}

/** The plaintext of a chunk object; BACKUP_CORRUPT on any mismatch. */
export async function openChunk(
  keys: Subkeys,
  id: string,
  sealed: Buffer,
  at: ChunkContext,
): Promise<Buffer> {
  const bad = (why: string, cause?: unknown) => corrupt(at.backupId, at.key, why, cause);
  if (sealed.length < CHUNK_HEADER_BYTES + TAG_BYTES || sealed.length > MAX_CHUNK_OBJECT_BYTES)
    throw bad(`has an impossible size (${sealed.length} bytes)`);
  if (!sealed.subarray(0, CHUNK_MAGIC.length).equals(CHUNK_MAGIC)) throw bad('is not a chunk (bad magic)');
  const flags = sealed[CHUNK_MAGIC.length]!;
  if ((flags & ~FLAG_ZSTD) !== 0) throw bad(`has unknown flags 0x${flags.toString(16)}`);
  const nonce = sealed.subarray(CHUNK_MAGIC.length + 1, CHUNK_HEADER_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', keys.chunkSeal, nonce);
  decipher.setAAD(aad(flags, id));
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  let body: Buffer;
  try {
    body = decipher.update(sealed.subarray(CHUNK_HEADER_BYTES, sealed.length - TAG_BYTES));
    // GCM's final() adds no bytes; it is where the tag is checked.
    decipher.final();
  } catch (err) {
    throw bad('does not authenticate (changed, or sealed under another key)', err);
  }
  let plaintext = body;
  if (flags & FLAG_ZSTD) {
    try {
      plaintext = await decompress(body, { maxOutputLength: CHUNK_SIZE, chunkSize: CHUNK_SIZE });
    } catch (err) {
      throw bad(`does not decompress to at most ${CHUNK_SIZE} bytes`, err);
    }
  } else if (body.length > CHUNK_SIZE) throw bad(`holds more than ${CHUNK_SIZE} bytes`);
  const expected = Buffer.from(id, 'hex');
  if (
    expected.length !== 32 ||
    !timingSafeEqual(createHmac('sha256', keys.chunkId).update(plaintext).digest(), expected)
  )
    throw bad('does not hold the chunk its name says (content hash mismatch)');
  return plaintext;
}
