/**
 * The numbers of the backup format, defined once. Changing CHUNK_SIZE or a magic makes a new
 * format: older backups would no longer open, so these are not settings.
 */

/** Chunks are cut at multiples of this, so a changed disk cluster maps to a chunk by division. */
export const CHUNK_SIZE = 1024 * 1024;

/**
 * The largest volume a manifest may describe. The manifest lists every chunk (about 67 bytes of
 * JSON each), so this bounds what opening one costs: 1 TiB is 1 Mi chunks, ~70 MB of JSON.
 */
export const MAX_VOLUME_BYTES = 1024 * 1024 * CHUNK_SIZE;

/** Two volumes (data and root) at their largest, plus room for the metadata. */
export const MAX_MANIFEST_JSON_BYTES = 2 * (MAX_VOLUME_BYTES / CHUNK_SIZE) * 70 + 1024 * 1024;

export const CHUNK_MAGIC = Buffer.from('WBC1');
export const MANIFEST_MAGIC = Buffer.from('WBM1');
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
/** magic | flags | nonce. */
export const CHUNK_HEADER_BYTES = CHUNK_MAGIC.length + 1 + NONCE_BYTES;
/** A chunk is stored compressed only when that is smaller, so no object is larger than this. */
export const MAX_CHUNK_OBJECT_BYTES = CHUNK_HEADER_BYTES + CHUNK_SIZE + TAG_BYTES;
/** Flag bit: the sealed plaintext is zstd-compressed. */
export const FLAG_ZSTD = 0x01;

/**
 * zstd level for chunks. Measured with bench/backup-format.ts (256 MiB of /usr files, incompressible
 * data and zeros, fs store, 2 busy cores): level 1 stores 46% of the volume against 80%
 * uncompressed, at 110-190 MB/s backup (uncompressed 190-225); level 3 saves 3 points more at
 * ~100 MB/s, level 6 one more at ~70. Level 1 halves what goes over the network and into the
 * store for little CPU. A chunk that does not shrink is stored as it is, whatever the level.
 */
export const DEFAULT_ZSTD_LEVEL = 1;

/** Chunks read, sealed and uploaded (or fetched and opened) at once; memory is about this many chunks. */
export const DEFAULT_CONCURRENCY = 4;

/** At most one progress report per this many milliseconds (and always one at the end). */
export const PROGRESS_INTERVAL_MS = 250;

/** verifyBackup lists at most this many problems: enough to name the damage, bounded in size. */
export const MAX_VERIFY_PROBLEMS = 100;

/** Where a chunk lives: two hex characters of fan-out keep listings and directories small. */
export function chunkObjectKey(id: string): string {
  return `chunks/${id.slice(0, 2)}/${id}`;
}

export function manifestObjectKey(backupId: string): string {
  return `manifests/${backupId}`;
}

export const CHUNK_ID = /^[0-9a-f]{64}$/;
export const CHUNK_PREFIX = 'chunks/';
export const MANIFEST_PREFIX = 'manifests/';
