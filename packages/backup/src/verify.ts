/**
 * Verifying a backup: reading its manifest and every chunk it lists back from the store and
 * checking each (authentication, size, content hash), listing every damaged or missing object
 * rather than stopping at the first, so an operator learns the extent of the damage at once.
 */
import type { ObjectStore } from '@warren/object-store';
import { type BackupProgress, type VerifyResult, WarrenError } from '@warren/protocol';
import { assertBackupId, concurrencyOf } from './args.ts';
import {
  CHUNK_SIZE,
  chunkObjectKey,
  DEFAULT_CONCURRENCY,
  MAX_VERIFY_PROBLEMS,
  manifestObjectKey,
  PROGRESS_INTERVAL_MS,
} from './constants.ts';
import type { Subkeys } from './keys.ts';
import { MAX_MANIFEST_OBJECT_BYTES, openManifest } from './manifest.ts';
import { readBounded } from './object-io.ts';
import { runPool, throttle } from './pool.ts';
import { domainKeys, fetchChunk } from './restore.ts';
import type { BackupKeyBuffers } from './write.ts';

export interface VerifyBackupOptions {
  store: ObjectStore;
  keys: BackupKeyBuffers;
  id: string;
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (progress: BackupProgress) => void;
}

const isCorrupt = (err: unknown): err is WarrenError =>
  err instanceof WarrenError && err.code === 'BACKUP_CORRUPT';

/**
 * `ok` when the manifest and every chunk check out. `chunks` counts distinct chunks checked,
 * `bytes` the bytes read from the store. A key that does not open the manifest throws
 * BACKUP_KEY_REJECTED (the backup may be fine: the key is wrong); a store that fails throws
 * OBJECT_STORE_UNAVAILABLE (nothing is known about the backup then).
 */
export async function verifyBackup(opts: VerifyBackupOptions): Promise<VerifyResult> {
  const { store, id } = opts;
  assertBackupId(id);
  const concurrency = concurrencyOf(opts.concurrency, DEFAULT_CONCURRENCY);
  const problems: VerifyResult['problems'] = [];
  let failed = 0;
  const problem = (object: string, err: WarrenError) => {
    failed++;
    if (problems.length < MAX_VERIFY_PROBLEMS) problems.push({ object, problem: err.message });
  };

  const manifestKey = manifestObjectKey(id);
  let bytes = 0;
  let manifest: Awaited<ReturnType<typeof openManifest>>;
  try {
    const sealed = await readBounded(store, id, manifestKey, MAX_MANIFEST_OBJECT_BYTES);
    bytes += sealed.length;
    manifest = await openManifest(opts.keys.tenant, id, sealed);
  } catch (err) {
    if (!isCorrupt(err)) throw err;
    problem(manifestKey, err);
    return { backup: id, ok: false, chunks: 0, bytes, problems };
  }
  const keys = domainKeys(manifest, opts.keys);

  // Each distinct chunk once, with the key of its domain and the length its place needs.
  const distinct = new Map<string, { keys: Subkeys; length: number }>();
  for (const volume of manifest.volumes) {
    for (let i = 0; i < volume.chunks.length; i++) {
      const cid = volume.chunks[i];
      if (!cid || distinct.has(cid)) continue;
      const length = Math.min(CHUNK_SIZE, volume.size - i * CHUNK_SIZE);
      distinct.set(cid, { keys: volume.domains[i] === 'i' ? keys.i! : keys.t, length });
    }
  }
  const progress: BackupProgress = {
    bytesTotal: [...distinct.values()].reduce((s, c) => s + c.length, 0),
    bytesDone: 0,
    bytesTransferred: bytes,
    chunksNew: 0,
    chunksReused: 0,
  };
  const report = throttle(PROGRESS_INTERVAL_MS, opts.onProgress);
  await runPool(
    distinct.entries(),
    concurrency,
    async ([cid, chunk]) => {
      try {
        const got = await fetchChunk(store, id, chunk.keys, cid, chunk.length);
        progress.bytesTransferred += got.storedBytes;
      } catch (err) {
        if (!isCorrupt(err)) throw err;
        problem(chunkObjectKey(cid), err);
      }
      progress.bytesDone += chunk.length;
      report.tick(() => ({ ...progress }));
    },
    opts.signal,
  );
  opts.signal?.throwIfAborted();
  report.flush({ ...progress });
  if (failed > problems.length)
    problems.push({ object: '(more)', problem: `${failed - problems.length} more objects failed the check` });
  return { backup: id, ok: failed === 0, chunks: distinct.size, bytes: progress.bytesTransferred, problems };
}
