import { Readable } from 'node:stream';
import { WarrenError } from '@warren/protocol';

/** What `head` and `list` report about a stored object. */
export interface ObjectInfo {
  key: string;
  /** Bytes. */
  size: number;
}

export interface PutOptions {
  /** When given, a body of any other length is refused and nothing is stored. */
  contentLength?: number;
}

/** What `collectIncomplete` did. */
export interface IncompleteCollected {
  /** Temporary files (fs) or multipart uploads (S3) removed. */
  removed: number;
  /** Set when the backend cannot list its incomplete uploads (the reason): nothing was removed. */
  unsupported?: string;
}

/**
 * Where backups live, shaped like the metadata store's dialects: a small interface, one folder
 * per backend (fs/, s3/), and a factory from validated configuration (config.ts). Adding a
 * backend means one more folder and one more entry in test/api/object-store-contract.test.ts.
 *
 * Guarantees every backend keeps:
 * - Atomic visibility: an object is either complete or absent. A put whose body fails half-way
 *   leaves nothing (and never a torn version of an older object); of two concurrent puts of one
 *   key, one complete body wins.
 * - Streaming: bodies flow through in bounded memory (S3 buffers at most partSize x queueSize).
 * - Keys are checked by `assertKey` before any I/O, so no key can name a path outside the
 *   filesystem root.
 */
export interface ObjectStore {
  readonly name: string;
  put(key: string, body: Readable | Buffer, options?: PutOptions): Promise<void>;
  /** The object's bytes, streamed; NOT_FOUND when absent. */
  get(key: string): Promise<Readable>;
  /** The object's size, or undefined when absent. */
  head(key: string): Promise<{ size: number } | undefined>;
  /** Removes the object; removing an absent one is not an error. */
  delete(key: string): Promise<void>;
  /** Every object whose key starts with `prefix`, each once; the order is the backend's. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /**
   * Removes what uploads that never finished left behind (a crashed process, a lost
   * connection): the filesystem backend's temporary files, S3's multipart uploads, when they
   * were started more than `olderThanMs` ago. Uploads younger than that may still be running,
   * so pass a margin well above the longest upload.
   */
  collectIncomplete(olderThanMs: number): Promise<IncompleteCollected>;
  close(): Promise<void>;
}

/** Well under S3's 1024 bytes, so a key that works on one backend works on all. */
export const MAX_KEY_LENGTH = 512;
/** Under the 255-byte file name limit of Linux filesystems, with room for nothing else. */
export const MAX_SEGMENT_LENGTH = 200;

/**
 * Segments of lower-case letters, digits, `.`, `_` and `-`, each starting with a letter or
 * digit: that rules out `.` and `..` (no escaping the root), hidden names (the filesystem
 * backend's temporary files start with a dot), empty segments and a leading or trailing `/`.
 */
const KEY = /^[a-z0-9][a-z0-9._-]*(?:\/[a-z0-9][a-z0-9._-]*)*$/;

export function assertKey(key: unknown): asserts key is string {
  if (
    typeof key !== 'string' ||
    key.length > MAX_KEY_LENGTH ||
    !KEY.test(key) ||
    key.split('/').some((segment) => segment.length > MAX_SEGMENT_LENGTH)
  ) {
    const shown = typeof key === 'string' ? JSON.stringify(key.slice(0, 80)) : typeof key;
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `object key ${shown} refused: keys are 1-${MAX_KEY_LENGTH} characters of [a-z0-9._-] in /-separated segments of at most ${MAX_SEGMENT_LENGTH} that each start with a letter or digit`,
    );
  }
}

export function assertAge(olderThanMs: unknown): asserts olderThanMs is number {
  if (typeof olderThanMs !== 'number' || !Number.isSafeInteger(olderThanMs) || olderThanMs < 0)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `olderThanMs ${String(olderThanMs)} is not a duration in milliseconds`,
    );
}

/** A list prefix is the start of some valid key (or empty, for everything). */
export function assertPrefix(prefix: unknown): asserts prefix is string {
  if (
    typeof prefix !== 'string' ||
    (prefix !== '' && !KEY.test(`${prefix}a`)) ||
    prefix.length >= MAX_KEY_LENGTH
  ) {
    const shown = typeof prefix === 'string' ? JSON.stringify(prefix.slice(0, 80)) : typeof prefix;
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `object key prefix ${shown} refused: it must be the start of a valid key`,
    );
  }
}

/**
 * The body as a stream that fails when its length differs from `contentLength`, so a short or
 * long body is never stored under the promised size.
 */
export function checkedBody(
  key: string,
  body: Readable | Buffer,
  contentLength: number | undefined,
): Readable {
  const stream = Buffer.isBuffer(body) ? Readable.from([body]) : body;
  if (contentLength === undefined) return stream;
  if (!Number.isSafeInteger(contentLength) || contentLength < 0)
    throw new WarrenError('INVALID_ARGUMENT', `contentLength ${contentLength} is not a byte count`);
  const mismatch = () =>
    new WarrenError('INVALID_ARGUMENT', `object ${key}: body is not the promised ${contentLength} bytes`);
  return Readable.from(
    (async function* () {
      let seen = 0;
      for await (const chunk of stream) {
        seen += (chunk as Buffer).length;
        if (seen > contentLength) throw mismatch();
        yield chunk as Buffer;
      }
      if (seen !== contentLength) throw mismatch();
    })(),
    { objectMode: false },
  );
}
