/**
 * Reading a backup back: its manifest, and a volume chunk by chunk. Every chunk is checked
 * (authenticated, bounded, its content hash compared with its name) before a byte of it is
 * written, and an all-zero chunk is not written at all: the caller's file is pre-sized and
 * sparse, so it keeps a hole there.
 */
import type { ObjectStore } from '@warren/object-store';
import { type BackupProgress, type BackupVolumeName, WarrenError } from '@warren/protocol';
import { assertBackupId, concurrencyOf } from './args.ts';
import { openChunk } from './chunk.ts';
import {
  CHUNK_SIZE,
  chunkObjectKey,
  DEFAULT_CONCURRENCY,
  MAX_CHUNK_OBJECT_BYTES,
  manifestObjectKey,
  PROGRESS_INTERVAL_MS,
} from './constants.ts';
import { type Subkeys, subkeys } from './keys.ts';
import { MAX_MANIFEST_OBJECT_BYTES, type Manifest, openManifest } from './manifest.ts';
import { corrupt, readBounded } from './object-io.ts';
import { runPool, throttle } from './pool.ts';
import type { BackupKeyBuffers } from './write.ts';

/** The opened manifest of backup `id`; BACKUP_CORRUPT when it is missing or damaged, BACKUP_KEY_REJECTED for another tenant's key. */
export async function readManifest(store: ObjectStore, tenantKey: Buffer, id: string): Promise<Manifest> {
  assertBackupId(id);
  const sealed = await readBounded(store, id, manifestObjectKey(id), MAX_MANIFEST_OBJECT_BYTES);
  return openManifest(tenantKey, id, sealed);
}

/** The keys for each domain of a manifest's chunks; BACKUP_KEY_REJECTED when the image key is missing or another. */
export function domainKeys(
  manifest: Manifest,
  keys: BackupKeyBuffers,
): { t: Subkeys; i: Subkeys | undefined } {
  const t = subkeys(keys.tenant);
  if (manifest.imageFingerprint === null) return { t, i: undefined };
  const i = keys.image ? subkeys(keys.image) : undefined;
  if (i?.fingerprint !== manifest.imageFingerprint)
    throw new WarrenError(
      'BACKUP_KEY_REJECTED',
      `backup ${manifest.id} holds chunks of image key ${manifest.imageFingerprint}; ${
        i ? `the image key given is ${i.fingerprint}` : 'no image key was given'
      }`,
    );
  return { t, i };
}

/** Fetches and opens one chunk, checking it has the length its place in the volume needs. */
export async function fetchChunk(
  store: ObjectStore,
  backupId: string,
  keys: Subkeys,
  id: string,
  expectedLength: number | undefined,
): Promise<{ plaintext: Buffer; storedBytes: number }> {
  const key = chunkObjectKey(id);
  const sealed = await readBounded(store, backupId, key, MAX_CHUNK_OBJECT_BYTES);
  const plaintext = await openChunk(keys, id, sealed, { backupId, key });
  if (expectedLength !== undefined && plaintext.length !== expectedLength)
    throw corrupt(
      backupId,
      key,
      `holds ${plaintext.length} bytes where the manifest needs ${expectedLength}`,
    );
  return { plaintext, storedBytes: sealed.length };
}

export interface RestoreVolumeOptions {
  store: ObjectStore;
  keys: BackupKeyBuffers;
  manifest: Manifest;
  backupId: string;
  volume: BackupVolumeName;
  /** Writes a checked chunk; the target must already be `size` bytes long (zeros are skipped). */
  write(offset: number, buf: Buffer): Promise<void>;
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (progress: BackupProgress) => void;
}

export interface RestoreVolumeResult {
  size: number;
  chunks: number;
  /** Bytes fetched from the store. */
  bytesTransferred: number;
}

export async function restoreVolume(opts: RestoreVolumeOptions): Promise<RestoreVolumeResult> {
  const { store, manifest, backupId } = opts;
  const concurrency = concurrencyOf(opts.concurrency, DEFAULT_CONCURRENCY);
  if (manifest.id !== backupId)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `the manifest given is backup ${manifest.id}'s, not ${backupId}'s`,
    );
  const volume = manifest.volumes.find((v) => v.name === opts.volume);
  if (!volume) throw new WarrenError('NOT_FOUND', `backup ${backupId} has no ${opts.volume} volume`);
  const keys = domainKeys(manifest, opts.keys);
  const progress: BackupProgress = {
    bytesTotal: volume.size,
    bytesDone: 0,
    bytesTransferred: 0,
    chunksNew: 0,
    chunksReused: 0,
  };
  const report = throttle(PROGRESS_INTERVAL_MS, opts.onProgress);
  let chunks = 0;
  const indexes = volume.chunks.keys();
  await runPool(
    indexes,
    concurrency,
    async (index) => {
      const id = volume.chunks[index];
      const length = Math.min(CHUNK_SIZE, volume.size - index * CHUNK_SIZE);
      if (id) {
        const domainKey = volume.domains[index] === 'i' ? keys.i! : keys.t;
        const got = await fetchChunk(store, backupId, domainKey, id, length);
        await opts.write(index * CHUNK_SIZE, got.plaintext);
        progress.bytesTransferred += got.storedBytes;
        chunks++;
      }
      progress.bytesDone += length;
      report.tick(() => ({ ...progress }));
    },
    opts.signal,
  );
  opts.signal?.throwIfAborted();
  report.flush({ ...progress });
  return { size: volume.size, chunks, bytesTransferred: progress.bytesTransferred };
}
