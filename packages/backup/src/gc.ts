/**
 * Garbage collection of the object store: mark and sweep. Every live backup's manifest is
 * opened and the chunks it lists are marked; then every object under chunks/ that is not
 * marked, and every manifest that is not a live backup's, is deleted.
 *
 * PRECONDITION (the caller's, loudly): NO BACKUP MAY RUN WHILE THIS RUNS, AND NONE MAY START.
 * A running backup uploads chunks before its manifest exists and skips chunks it finds in the
 * store (or in its previous backup): if it skipped a chunk this sweep is about to delete, its
 * manifest would commit a backup that cannot be restored. The control plane holds an
 * exclusion lock between backups and GC (like restic's prune lock); nothing here can check it.
 *
 * Knowledge must be complete before anything is deleted: when any live manifest cannot be read
 * or opened (missing, damaged, wrong key, store unreachable), this throws and deletes nothing,
 * since the chunks that manifest lists cannot be told apart from garbage.
 */
import type { ObjectStore } from '@warren/object-store';
import { WarrenError } from '@warren/protocol';
import { assertBackupId, concurrencyOf } from './args.ts';
import { CHUNK_ID, CHUNK_PREFIX, chunkObjectKey, MANIFEST_PREFIX, manifestObjectKey } from './constants.ts';
import { runPool } from './pool.ts';
import { readManifest } from './restore.ts';

export interface LiveBackup {
  id: string;
  tenantKey: Buffer;
}

export interface CollectGarbageOptions {
  store: ObjectStore;
  /** Every backup to keep: all complete backups of all tenants in the catalog. */
  live: LiveBackup[];
  /** Deletes at once (default 8). */
  concurrency?: number;
  signal?: AbortSignal;
}

export interface CollectGarbageResult {
  liveBackups: number;
  chunksKept: number;
  bytesKept: number;
  chunksDeleted: number;
  manifestsDeleted: number;
  /** Bytes of the objects deleted. */
  bytesDeleted: number;
}

export async function collectGarbage(opts: CollectGarbageOptions): Promise<CollectGarbageResult> {
  const { store, signal } = opts;
  // Mark.
  const liveManifests = new Set<string>();
  const marked = new Set<string>();
  for (const backup of opts.live) {
    assertBackupId(backup.id);
    signal?.throwIfAborted();
    let manifest: Awaited<ReturnType<typeof readManifest>>;
    try {
      manifest = await readManifest(store, backup.tenantKey, backup.id);
    } catch (err) {
      const code = err instanceof WarrenError ? err.code : 'INTERNAL';
      const message = err instanceof Error ? err.message : String(err);
      throw new WarrenError(code, `garbage collection deleted nothing: live ${message}`, { cause: err });
    }
    liveManifests.add(manifestObjectKey(backup.id));
    for (const volume of manifest.volumes) for (const cid of volume.chunks) if (cid) marked.add(cid);
  }

  // Sweep: list first, then delete, so deletions never disturb a listing's pages.
  const doomed: { key: string; size: number; manifest: boolean }[] = [];
  let chunksKept = 0;
  let bytesKept = 0;
  for await (const item of store.list(MANIFEST_PREFIX)) {
    if (!liveManifests.has(item.key)) doomed.push({ ...item, manifest: true });
  }
  for await (const item of store.list(CHUNK_PREFIX)) {
    const cid = item.key.slice(item.key.lastIndexOf('/') + 1);
    if (CHUNK_ID.test(cid) && chunkObjectKey(cid) === item.key && marked.has(cid)) {
      chunksKept++;
      bytesKept += item.size;
    } else doomed.push({ ...item, manifest: false });
  }
  const result: CollectGarbageResult = {
    liveBackups: liveManifests.size,
    chunksKept,
    bytesKept,
    chunksDeleted: 0,
    manifestsDeleted: 0,
    bytesDeleted: 0,
  };
  await runPool(
    doomed,
    concurrencyOf(opts.concurrency, 8),
    async (item) => {
      await store.delete(item.key);
      if (item.manifest) result.manifestsDeleted++;
      else result.chunksDeleted++;
      result.bytesDeleted += item.size;
    },
    signal,
  );
  return result;
}
