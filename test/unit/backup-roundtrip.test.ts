/**
 * @warren/backup against both object stores with real volume files: what is restored is what
 * was backed up, byte for byte, and an incremental backup reads and uploads only what changed.
 */
import assert from 'node:assert/strict';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CHUNK_SIZE, chunkObjectKey, newKey, readManifest, restoreVolume, writeBackup } from '@warren/backup';
import type { ObjectStore } from '@warren/object-store';
import { type BackupProgress, WarrenError } from '@warren/protocol';
import {
  backends,
  chunkOf,
  fileSource,
  listAll,
  metadata,
  overwriteChunk,
  restoreTarget,
  sha256File,
  writeVolume,
} from '../helpers/backup-volumes.ts';

const env = await backends();
after(() => env.cleanup());

/** r: random, t: text, z: zeros; chunk 6 repeats chunk 1's content to exercise in-backup dedup. */
const LAYOUT = 'rtzzrttrzr';
const TAIL_SHORT = 12_345;

/** Restores backup `id` into a new sparse file; returns its sha256. Zero chunks must not be written. */
async function restoreToFile(store: ObjectStore, tenant: Buffer, id: string, path: string): Promise<string> {
  const manifest = await readManifest(store, tenant, id);
  const volume = manifest.volumes.find((v) => v.name === 'data')!;
  const target = await restoreTarget(path, volume.size);
  const written: number[] = [];
  try {
    await restoreVolume({
      store,
      keys: { tenant },
      manifest,
      backupId: id,
      volume: 'data',
      write: async (offset, buf) => {
        written.push(offset / CHUNK_SIZE);
        await target.write(offset, buf);
      },
    });
  } finally {
    await target.close();
  }
  const expected = volume.chunks.flatMap((c, i) => (c === null ? [] : [i]));
  assert.deepEqual(
    written.sort((x, y) => x - y),
    expected,
  );
  return sha256File(path);
}

for (const backend of env.list) {
  describe(`backup round trip: ${backend.label}`, () => {
    let store: ObjectStore;
    let n = 0;
    const path = (name: string) => join(env.dir, `${backend.label}-${n}-${name}`);
    before(async () => {
      store = await backend.make();
    });

    test('backup then restore into a new file gives identical bytes; zeros are not stored', async () => {
      n++;
      const tenant = newKey();
      const vol = path('vol');
      const size = await writeVolume(vol, LAYOUT, 'roundtrip', TAIL_SHORT);
      await overwriteChunk(vol, 6, chunkOf('t', 'roundtrip/1'));
      const source = fileSource(vol, size);
      const progress: BackupProgress[] = [];
      const result = await writeBackup({
        store,
        keys: { tenant },
        id: 'bak_00000000000000a1',
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [source],
        concurrency: 3,
        onProgress: (p) => progress.push(p),
      });
      const volume = result.manifest.volumes[0]!;
      assert.equal(volume.size, size);
      assert.equal(volume.domains, 'tt00tttt0t');
      assert.equal(volume.chunks[6], volume.chunks[1], 'equal content has one id');
      // 7 non-zero chunks, one a repeat: 6 objects, plus the manifest.
      assert.equal(result.chunksNew, 6);
      assert.equal(result.chunksReused, 1);
      assert.equal(result.chunksZero, 3);
      const objects = await listAll(store);
      assert.equal(objects.length, 7, objects.map((o) => o.key).join(' '));
      assert.equal(objects.filter((o) => o.key.startsWith('manifests/')).length, 1);
      assert.equal(
        result.storedBytes,
        objects.reduce((s, o) => s + o.size, 0),
      );
      assert.ok(source.maxInFlight() <= 3, `reads in flight ${source.maxInFlight()}`);
      const last = progress.at(-1)!;
      assert.equal(last.bytesDone, size);
      assert.equal(last.bytesTotal, size);
      assert.equal(last.chunksNew, 6);

      assert.equal(
        await restoreToFile(store, tenant, 'bak_00000000000000a1', path('restored')),
        await sha256File(vol),
      );
    });

    test('an incremental backup reads and uploads only the changed chunks; both backups restore', async () => {
      n++;
      const tenant = newKey();
      const vol = path('vol');
      const size = await writeVolume(vol, LAYOUT, 'incremental', TAIL_SHORT);
      const first = await writeBackup({
        store,
        keys: { tenant },
        id: 'bak_00000000000000b1',
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
      });
      const firstCopy = path('first');
      await copyFile(vol, firstCopy);
      const before = await listAll(store);

      // Chunk 0 becomes zeros, 2 (was zeros) gets text, 4 new random data, 9 (the short tail) text.
      await overwriteChunk(vol, 0, Buffer.alloc(CHUNK_SIZE));
      await overwriteChunk(vol, 2, chunkOf('t', 'incremental-new/2'));
      await overwriteChunk(vol, 4, chunkOf('r', 'incremental-new/4'));
      await overwriteChunk(vol, 9, chunkOf('t', 'incremental-new/9', CHUNK_SIZE - TAIL_SHORT));
      const source = fileSource(vol, size, { changed: [0, 2, 4, 9] });
      const seen = env.s3.requests.length;
      const second = await writeBackup({
        store,
        keys: { tenant },
        id: 'bak_00000000000000b2',
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [source],
        previous: first.manifest,
      });
      assert.deepEqual(source.reads, [0, 2, 4, 9]);
      assert.equal(second.chunksNew, 3);
      assert.equal(second.chunksZero, 1);
      assert.equal(second.chunksUnchanged, LAYOUT.length - 4);
      const added = (await listAll(store))
        .filter((o) => !before.some((b) => b.key === o.key))
        .map((o) => o.key);
      const v2 = second.manifest.volumes[0]!;
      assert.deepEqual(
        added.sort(),
        [
          chunkObjectKey(v2.chunks[2]!),
          chunkObjectKey(v2.chunks[4]!),
          chunkObjectKey(v2.chunks[9]!),
          'manifests/bak_00000000000000b2',
        ].sort(),
      );
      if (backend.label === 's3') {
        // Only the three new chunks are looked up: what the previous manifest lists is not.
        const heads = env.s3.requests.slice(seen).filter((r) => r.startsWith('HEAD '));
        assert.equal(heads.length, 3, heads.join('\n'));
      }

      assert.equal(
        await restoreToFile(store, tenant, 'bak_00000000000000b2', path('r2')),
        await sha256File(vol),
      );
      assert.equal(
        await restoreToFile(store, tenant, 'bak_00000000000000b1', path('r1')),
        await sha256File(firstCopy),
      );
    });

    test('a full backup with a previous manifest uploads nothing the store has', async () => {
      n++;
      const tenant = newKey();
      const vol = path('vol');
      const size = await writeVolume(vol, 'rtr', 'full-again');
      const first = await writeBackup({
        store,
        keys: { tenant },
        id: 'bak_00000000000000c1',
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
      });
      const second = await writeBackup({
        store,
        keys: { tenant },
        id: 'bak_00000000000000c2',
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
        previous: first.manifest,
        zstdLevel: 0,
      });
      assert.equal(second.chunksNew, 0);
      assert.equal(second.chunksReused, 3);
      assert.deepEqual(second.manifest.volumes, first.manifest.volumes);
    });

    test('uncompressed chunks (zstd level 0) round-trip too', async () => {
      n++;
      const tenant = newKey();
      const vol = path('vol');
      const size = await writeVolume(vol, 'tzr', 'plain', 1);
      await writeBackup({
        store,
        keys: { tenant },
        id: 'bak_00000000000000d1',
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
        zstdLevel: 0,
      });
      assert.equal(
        await restoreToFile(store, tenant, 'bak_00000000000000d1', path('r')),
        await sha256File(vol),
      );
    });

    test('a restore stops at the signal: no chunk is fetched after it', async () => {
      n++;
      const tenant = newKey();
      const vol = path('vol');
      const size = await writeVolume(vol, 'rtrtrt', 'abort-restore');
      const { manifest } = await writeBackup({
        store,
        keys: { tenant },
        id: 'bak_00000000000000f2',
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
      });
      const controller = new AbortController();
      let writes = 0;
      await assert.rejects(
        restoreVolume({
          store,
          keys: { tenant },
          manifest,
          backupId: 'bak_00000000000000f2',
          volume: 'data',
          concurrency: 1,
          signal: controller.signal,
          write: async () => {
            if (++writes === 2) controller.abort(new Error('the operator cancelled the restore'));
          },
        }),
        /cancelled the restore/,
      );
      assert.equal(writes, 2);
    });

    test('bad arguments are refused before anything is stored', async () => {
      const own = await backend.make();
      const vol = path('args');
      const size = await writeVolume(vol, 'r', 'args');
      const base = {
        store: own,
        keys: { tenant: newKey() },
        id: 'bak_00000000000000f1',
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
      };
      const invalid = (err: unknown) => err instanceof WarrenError && err.code === 'INVALID_ARGUMENT';
      await assert.rejects(writeBackup({ ...base, id: '../../etc/passwd' }), invalid);
      await assert.rejects(writeBackup({ ...base, pointInTime: 'yesterday' }), invalid);
      await assert.rejects(writeBackup({ ...base, metadata: { ...metadata(), tenantId: 'x' } }), invalid);
      await assert.rejects(writeBackup({ ...base, concurrency: 0 }), invalid);
      await assert.rejects(
        writeBackup({ ...base, volumes: [fileSource(vol, size), fileSource(vol, size)] }),
        invalid,
      );
      await assert.rejects(
        writeBackup({ ...base, volumes: [fileSource(vol, size, { name: 'root', imageChunk: () => true })] }),
        invalid,
      );
      await assert.rejects(readManifest(own, newKey(), 'manifests/x'), invalid);
      assert.deepEqual(await listAll(own), []);
    });

    test('changed chunks without a previous backup of that size are refused', async () => {
      const tenant = newKey();
      await assert.rejects(
        writeBackup({
          store,
          keys: { tenant },
          id: 'bak_00000000000000e1',
          pointInTime: new Date().toISOString(),
          metadata: metadata(),
          volumes: [fileSource('/nonexistent', CHUNK_SIZE, { changed: [0] })],
        }),
        (err: unknown) => err instanceof WarrenError && err.code === 'INVALID_ARGUMENT',
      );
    });
  });
}
