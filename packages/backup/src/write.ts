/**
 * Writing a backup: every chunk the sources say to read is cut, named, sealed and uploaded
 * unless the store already has it, then the manifest is written last. The manifest is the
 * commit point: until it exists the backup does not, and chunks uploaded by a backup that
 * never got there are garbage for collectGarbage.
 */
import type { ObjectStore } from '@warren/object-store';
import { BackupMetadata, type BackupProgress, type BackupVolumeName, WarrenError } from '@warren/protocol';
import { z } from 'zod';
import { assertBackupId, concurrencyOf } from './args.ts';
import { chunkId, isZero, sealChunk } from './chunk.ts';
import {
  CHUNK_SIZE,
  chunkObjectKey,
  DEFAULT_CONCURRENCY,
  MAX_VOLUME_BYTES,
  manifestObjectKey,
  PROGRESS_INTERVAL_MS,
} from './constants.ts';
import { type Subkeys, subkeys } from './keys.ts';
import { type Manifest, type ManifestVolume, sealManifest } from './manifest.ts';
import { runPool, throttle } from './pool.ts';
import { fetchChunk } from './restore.ts';

/** A disk to back up, as of the frozen point in time. */
export interface VolumeSource {
  name: BackupVolumeName;
  /** Bytes, as the guest sees the disk. */
  size: number;
  /** Reads `length` bytes at `offset` (never past `size`); must return exactly that many. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Chunk indexes that may differ from the previous backup's, ascending; absent means all. Only
   * valid with a previous manifest that has this volume at the same size: every other chunk's
   * entry is copied from it.
   */
  changed?: Iterable<number>;
  /** True when chunk `index` is entirely the image's own content: it is sealed with the image key. */
  imageChunk?(index: number): boolean;
}

export interface BackupKeyBuffers {
  tenant: Buffer;
  /** Needed when a volume's imageChunk says yes for some chunk, and to restore such a backup. */
  image?: Buffer;
}

export interface WriteBackupOptions {
  store: ObjectStore;
  keys: BackupKeyBuffers;
  id: string;
  /** When the disks were frozen (ISO 8601). */
  pointInTime: string;
  metadata: BackupMetadata;
  volumes: VolumeSource[];
  /** The tenant's previous backup, already opened: its chunks are known to exist in the store. */
  previous?: Manifest;
  /** Chunks in flight at once (default DEFAULT_CONCURRENCY); memory is about this many chunks. */
  concurrency?: number;
  /** zstd level for chunks (default DEFAULT_ZSTD_LEVEL), 0 for none. */
  zstdLevel?: number;
  signal?: AbortSignal;
  onProgress?: (progress: BackupProgress) => void;
}

export interface WriteBackupResult {
  manifest: Manifest;
  /** Bytes this backup added to the store: new chunk objects and its manifest. */
  storedBytes: number;
  /** Chunks uploaded by this backup. */
  chunksNew: number;
  /** Chunks read but already in the store (or in the previous backup), not uploaded again. */
  chunksReused: number;
  /** Chunks read and found to be zeros. */
  chunksZero: number;
  /** Chunk entries copied from the previous manifest without reading them. */
  chunksUnchanged: number;
  /** Image chunks found damaged in the store and stored again (counted in chunksNew too). */
  chunksRepaired: number;
  /** Bytes read from the volumes. */
  bytesRead: number;
}

/** Whether the store's object for chunk `cid` opens and holds exactly that content. */
async function holdsChunk(store: ObjectStore, backupId: string, keys: Subkeys, cid: string, length: number) {
  try {
    await fetchChunk(store, backupId, keys, cid, length);
    return true;
  } catch (err) {
    if (err instanceof WarrenError && err.code === 'BACKUP_CORRUPT') return false;
    throw err;
  }
}

function volumeChunks(size: number): number {
  return Math.ceil(size / CHUNK_SIZE);
}

/** Which chunk indexes of `source` to read, checked, in ascending order. */
function indexesToRead(source: VolumeSource, previous: ManifestVolume | undefined): number[] {
  const count = volumeChunks(source.size);
  if (source.changed === undefined) return Array.from({ length: count }, (_, i) => i);
  if (!previous || previous.size !== source.size)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `volume ${source.name}: a list of changed chunks needs a previous backup of the same volume at the same size`,
    );
  const out: number[] = [];
  for (const i of source.changed) {
    if (!Number.isSafeInteger(i) || i < 0 || i >= count || (out.length > 0 && i <= out[out.length - 1]!))
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `volume ${source.name}: changed chunk ${i} is not an ascending index below ${count}`,
      );
    out.push(i);
  }
  return out;
}

export async function writeBackup(opts: WriteBackupOptions): Promise<WriteBackupResult> {
  const { store, id, signal } = opts;
  const concurrency = concurrencyOf(opts.concurrency, DEFAULT_CONCURRENCY);
  assertBackupId(id);
  // What the manifest will say is checked now, not after every chunk is uploaded.
  if (!z.iso.datetime().safeParse(opts.pointInTime).success)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `pointInTime ${JSON.stringify(opts.pointInTime)} is not an ISO 8601 UTC time`,
    );
  const metadataCheck = BackupMetadata.safeParse(opts.metadata);
  if (!metadataCheck.success)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `backup metadata refused: ${z.prettifyError(metadataCheck.error)}`,
    );
  const tenant = subkeys(opts.keys.tenant);
  const image = opts.keys.image ? subkeys(opts.keys.image) : undefined;
  // Entries copied from the previous backup keep its image domain: they must be the same key.
  const previousImage = opts.previous?.imageFingerprint ?? null;
  if (image && previousImage && previousImage !== image.fingerprint && opts.volumes.some((v) => v.changed))
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `the image key changed since the previous backup (${previousImage}, now ${image.fingerprint}): read every chunk`,
    );
  const names = opts.volumes.map((v) => v.name);
  if (new Set(names).size !== names.length)
    throw new WarrenError('INVALID_ARGUMENT', `a volume is given twice (${names.join(', ')})`);

  const plans = opts.volumes.map((source) => {
    if (!Number.isSafeInteger(source.size) || source.size < 0 || source.size > MAX_VOLUME_BYTES)
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `volume ${source.name} of ${source.size} bytes: backups hold volumes of at most ${MAX_VOLUME_BYTES} bytes`,
      );
    const previous = opts.previous?.volumes.find((v) => v.name === source.name);
    const read = indexesToRead(source, previous);
    const count = volumeChunks(source.size);
    // Start from the previous entries (or zeros); the chunks read overwrite theirs.
    const chunks: (string | null)[] =
      source.changed !== undefined && previous ? [...previous.chunks] : new Array(count).fill(null);
    const domains: string[] =
      source.changed !== undefined && previous ? [...previous.domains] : new Array(count).fill('0');
    return { source, read, chunks, domains };
  });

  // Ids known to be in the store: the previous backup's (its manifest exists, so its chunks
  // were all uploaded before it), and those this backup uploads or finds. A promise per id, so
  // two equal chunks in flight at once are uploaded once.
  const known = new Map<string, Promise<unknown>>();
  for (const v of opts.previous?.volumes ?? [])
    for (const c of v.chunks) if (c !== null) known.set(c, Promise.resolve());

  const bytesTotal = plans.reduce(
    (sum, p) => sum + p.read.reduce((s, i) => s + Math.min(CHUNK_SIZE, p.source.size - i * CHUNK_SIZE), 0),
    0,
  );
  const progress: BackupProgress = {
    bytesTotal,
    bytesDone: 0,
    bytesTransferred: 0,
    chunksNew: 0,
    chunksReused: 0,
  };
  const report = throttle(PROGRESS_INTERVAL_MS, opts.onProgress);
  let chunksZero = 0;

  let chunksRepaired = 0;
  /**
   * Uploads the sealed chunk unless present; true when this call stored it. An image chunk
   * found in the store is read back and checked, not trusted: every host agent that backs up a
   * tenant of that image holds the image key, so one of them could have planted a bad object
   * under the id for other tenants to reference. A bad one is replaced with the real content,
   * which also repairs the backups that already reference it.
   */
  const ensureStored = async (keys: Subkeys, cid: string, plaintext: Buffer, shared: boolean) => {
    const key = chunkObjectKey(cid);
    if (await store.head(key)) {
      if (!shared || (await holdsChunk(store, id, keys, cid, plaintext.length))) return false;
      chunksRepaired++;
    }
    const sealed = await sealChunk(keys, cid, plaintext, { zstdLevel: opts.zstdLevel });
    await store.put(key, sealed, { contentLength: sealed.length });
    progress.bytesTransferred += sealed.length;
    return true;
  };

  for (const plan of plans) {
    const { source } = plan;
    await runPool(
      plan.read,
      concurrency,
      async (index) => {
        const offset = index * CHUNK_SIZE;
        const length = Math.min(CHUNK_SIZE, source.size - offset);
        const plaintext = await source.read(offset, length);
        if (plaintext.length !== length)
          throw new WarrenError(
            'INTERNAL',
            `volume ${source.name}: read of ${length} bytes at ${offset} returned ${plaintext.length}`,
          );
        if (isZero(plaintext)) {
          plan.chunks[index] = null;
          plan.domains[index] = '0';
          chunksZero++;
        } else {
          const inImage = source.imageChunk?.(index) ?? false;
          if (inImage && !image)
            throw new WarrenError(
              'INVALID_ARGUMENT',
              `volume ${source.name}: chunk ${index} is image content but no image key was given`,
            );
          const keys = inImage && image ? image : tenant;
          const cid = chunkId(keys, plaintext);
          const pending = known.get(cid);
          if (pending) {
            await pending;
            progress.chunksReused++;
          } else {
            const upload = ensureStored(keys, cid, plaintext, inImage);
            known.set(cid, upload);
            // A failed upload must not be taken as known by a later equal chunk.
            upload.catch(() => known.delete(cid));
            if (await upload) progress.chunksNew++;
            else progress.chunksReused++;
          }
          plan.chunks[index] = cid;
          plan.domains[index] = inImage ? 'i' : 't';
        }
        progress.bytesDone += length;
        report.tick(() => ({ ...progress }));
      },
      signal,
    );
  }
  // Uploads of equal chunks end with the chunk that started them; nothing is left in flight.
  signal?.throwIfAborted();

  const usesImage = plans.some((p) => p.domains.includes('i'));
  const manifest: Manifest = {
    version: 1,
    id,
    createdAt: new Date().toISOString(),
    pointInTime: opts.pointInTime,
    metadata: opts.metadata,
    chunkSize: CHUNK_SIZE,
    imageFingerprint: usesImage ? (image?.fingerprint ?? previousImage) : null,
    volumes: plans.map((p) => ({
      name: p.source.name,
      size: p.source.size,
      chunks: p.chunks,
      domains: p.domains.join(''),
    })),
  };
  const sealed = await sealManifest(opts.keys.tenant, manifest);
  await store.put(manifestObjectKey(id), sealed, { contentLength: sealed.length });
  progress.bytesTransferred += sealed.length;
  report.flush({ ...progress });
  const unchanged = plans.reduce((sum, p) => sum + volumeChunks(p.source.size) - p.read.length, 0);
  return {
    manifest,
    storedBytes: progress.bytesTransferred,
    chunksNew: progress.chunksNew,
    chunksReused: progress.chunksReused,
    chunksZero,
    chunksUnchanged: unchanged,
    chunksRepaired,
    bytesRead: progress.bytesDone,
  };
}
