/**
 * What the backup format protects against, performed as attacks on real stores (fs and S3):
 * tampered and deleted objects are found and named, a wrong key is told apart from damage, the
 * store never sees plaintext or names, and chunks are stored once (across tenants for image
 * content).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gunzipSync, zstdDecompressSync } from 'node:zlib';
import {
  CHUNK_SIZE,
  chunkObjectKey,
  imageKey,
  newKey,
  readManifest,
  restoreVolume,
  sealChunk,
  subkeys,
  unwrapTenantKey,
  verifyBackup,
  wrapTenantKey,
  writeBackup,
} from '@warren/backup';
import type { ObjectStore } from '@warren/object-store';
import { WarrenError } from '@warren/protocol';
import {
  backends,
  fileSource,
  listAll,
  metadata,
  overwriteChunk,
  readObject,
  restoreTarget,
  sha256File,
  text,
  writeVolume,
} from '../helpers/backup-volumes.ts';

const env = await backends();
after(() => env.cleanup());

function isError(code: string, ...mentions: string[]) {
  return (err: unknown) => {
    assert.ok(err instanceof WarrenError, String(err));
    assert.equal(err.code, code, err.message);
    for (const m of mentions) assert.ok(err.message.includes(m), `"${err.message}" does not name ${m}`);
    return true;
  };
}

async function restore(
  store: ObjectStore,
  keys: { tenant: Buffer; image?: Buffer },
  id: string,
  path: string,
) {
  const manifest = await readManifest(store, keys.tenant, id);
  const target = await restoreTarget(path, manifest.volumes[0]!.size);
  try {
    await restoreVolume({
      store,
      keys,
      manifest,
      backupId: id,
      volume: manifest.volumes[0]!.name,
      write: target.write,
    });
  } finally {
    await target.close();
  }
  return sha256File(path);
}

/** Every way the body of an object decodes (gzip, zstd) after a chunk's (17 bytes) or a manifest's (32) header. */
function decodable(bytes: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (const start of [17, 32]) {
    for (const end of [bytes.length - 16, bytes.length]) {
      const body = bytes.subarray(start, end);
      for (const decode of [gunzipSync, zstdDecompressSync]) {
        try {
          out.push(decode(body, { maxOutputLength: 64 * CHUNK_SIZE }));
        } catch {}
      }
    }
  }
  return out;
}

for (const backend of env.list) {
  describe(`backup integrity: ${backend.label}`, () => {
    let store: ObjectStore;
    let n = 0;
    const path = (name: string) => join(env.dir, `integrity-${backend.label}-${n}-${name}`);
    before(async () => {
      store = await backend.make();
    });

    test('one flipped byte anywhere in any object: restore and verify name the backup and the object', async () => {
      n++;
      const tenant = newKey();
      const id = 'bak_1000000000000001';
      const vol = path('vol');
      const size = await writeVolume(vol, 'rtzr', 'tamper', 777);
      await writeBackup({
        store,
        keys: { tenant },
        id,
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
      });
      const objects = await listAll(store);
      assert.equal(objects.length, 4);
      for (const { key, size: objectSize } of objects) {
        const original = await readObject(store, key);
        // The magic, the flags or fingerprint, the nonce, the ciphertext, the tag.
        for (const at of [0, 4, 7, 12, Math.floor(objectSize / 2), objectSize - 1]) {
          const damaged = Buffer.from(original);
          damaged[at]! ^= 0x01;
          await backend.replace(store, key, damaged);
          const what = `${key} byte ${at}`;
          if (key.startsWith('manifests/')) {
            await assert.rejects(readManifest(store, tenant, id), isError('BACKUP_CORRUPT', id, key), what);
          } else {
            await assert.rejects(
              restore(store, { tenant }, id, path('out')),
              isError('BACKUP_CORRUPT', id, key),
              what,
            );
          }
          const verdict = await verifyBackup({ store, keys: { tenant }, id });
          assert.equal(verdict.ok, false, what);
          assert.deepEqual(
            verdict.problems.map((p) => p.object),
            [key],
            what,
          );
        }
        await backend.replace(store, key, original);
      }
      const clean = await verifyBackup({ store, keys: { tenant }, id });
      assert.deepEqual(clean, {
        backup: id,
        ok: true,
        chunks: 3,
        bytes: objects.reduce((s, o) => s + o.size, 0),
        problems: [],
      });
      assert.equal(await restore(store, { tenant }, id, path('out')), await sha256File(vol));
    });

    test("an authentic chunk stored under another chunk's name is caught by the content hash", async () => {
      n++;
      const tenant = newKey();
      const id = 'bak_1000000000000002';
      const vol = path('vol');
      const size = await writeVolume(vol, 'rt', 'swap');
      const { manifest } = await writeBackup({
        store,
        keys: { tenant },
        id,
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
      });
      const [a, b] = manifest.volumes[0]!.chunks.map((c) => `chunks/${c!.slice(0, 2)}/${c}`);
      // Sealed objects bind their id in the AAD, so a plain swap fails authentication; either
      // way the restore must refuse rather than write chunk b's bytes at chunk a's place.
      await backend.replace(store, a!, await readObject(store, b!));
      await assert.rejects(restore(store, { tenant }, id, path('out')), isError('BACKUP_CORRUPT', id, a!));
    });

    test('deleted chunks are each reported, and restore names the first it needs', async () => {
      n++;
      const tenant = newKey();
      const id = 'bak_1000000000000003';
      const vol = path('vol');
      const size = await writeVolume(vol, 'rtrt', 'deleted');
      const { manifest } = await writeBackup({
        store,
        keys: { tenant },
        id,
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size)],
      });
      const keys = manifest.volumes[0]!.chunks.map((c) => `chunks/${c!.slice(0, 2)}/${c}`);
      await store.delete(keys[1]!);
      await store.delete(keys[3]!);
      const verdict = await verifyBackup({ store, keys: { tenant }, id });
      assert.equal(verdict.ok, false);
      assert.equal(verdict.chunks, 4);
      assert.deepEqual(verdict.problems.map((p) => p.object).sort(), [keys[1], keys[3]].sort());
      assert.match(verdict.problems[0]!.problem, /missing/);
      await assert.rejects(
        restoreVolume({
          store,
          keys: { tenant },
          manifest,
          backupId: id,
          volume: 'data',
          concurrency: 1,
          write: async () => {},
        }),
        isError('BACKUP_CORRUPT', id, keys[1]!, 'missing'),
      );
      // A missing manifest is a verify problem too, not a crash.
      await store.delete(`manifests/${id}`);
      const gone = await verifyBackup({ store, keys: { tenant }, id });
      assert.deepEqual(
        gone.problems.map((p) => p.object),
        [`manifests/${id}`],
      );
    });

    test('another tenant key is BACKUP_KEY_REJECTED, not BACKUP_CORRUPT; so is a missing or wrong image key', async () => {
      n++;
      const tenant = newKey();
      const master = newKey();
      const image = imageKey(master, 'sha256:feedface');
      const id = 'bak_1000000000000004';
      const vol = path('vol');
      const size = await writeVolume(vol, 'rt', 'wrong-key');
      await writeBackup({
        store,
        keys: { tenant, image },
        id,
        pointInTime: new Date().toISOString(),
        metadata: metadata(),
        volumes: [fileSource(vol, size, { name: 'root', imageChunk: (i) => i === 0 })],
      });
      const other = newKey();
      await assert.rejects(readManifest(store, other, id), isError('BACKUP_KEY_REJECTED', id));
      await assert.rejects(
        verifyBackup({ store, keys: { tenant: other }, id }),
        isError('BACKUP_KEY_REJECTED'),
      );
      await assert.rejects(restore(store, { tenant }, id, path('out')), isError('BACKUP_KEY_REJECTED', id));
      await assert.rejects(
        restore(store, { tenant, image: imageKey(master, 'sha256:other') }, id, path('out')),
        isError('BACKUP_KEY_REJECTED', id),
      );
      assert.equal(await restore(store, { tenant, image }, id, path('out')), await sha256File(vol));

      const wrapped = wrapTenantKey(master, 'ten_0123456789abcdef', tenant);
      assert.deepEqual(unwrapTenantKey(master, 'ten_0123456789abcdef', wrapped), tenant);
      assert.throws(
        () => unwrapTenantKey(newKey(), 'ten_0123456789abcdef', wrapped),
        isError('BACKUP_KEY_REJECTED'),
      );
      // The wrapped key is bound to its tenant: moved to another tenant's row it does not open.
      assert.throws(
        () => unwrapTenantKey(master, 'ten_fedcba9876543210', wrapped),
        isError('BACKUP_KEY_REJECTED'),
      );
    });

    test("an image chunk planted by another tenant's host is caught, and repaired by the next backup of that image", async () => {
      n++;
      const master = newKey();
      const image = imageKey(master, 'sha256:5ca1ab1e');
      const vol = path('vol');
      const size = await writeVolume(vol, 'tr', 'poison');
      const root = () => fileSource(vol, size, { name: 'root', imageChunk: (i) => i === 0 });
      const common = { store, pointInTime: new Date().toISOString(), metadata: metadata() };
      const victim = newKey();
      const first = await writeBackup({
        ...common,
        keys: { tenant: victim, image },
        id: 'bak_1000000000000006',
        volumes: [root()],
      });
      const cid = first.manifest.volumes[0]!.chunks[0]!;
      // A host agent that once held this image key (for any tenant) seals other content under
      // the id of a real image chunk: it authenticates, but it is not that chunk.
      await backend.replace(
        store,
        chunkObjectKey(cid),
        await sealChunk(subkeys(image), cid, text('planted', CHUNK_SIZE)),
      );
      await assert.rejects(
        restore(store, { tenant: victim, image }, 'bak_1000000000000006', path('out')),
        isError('BACKUP_CORRUPT', chunkObjectKey(cid), 'content hash'),
      );
      // Another tenant of the image backs up: it checks the image chunk it would reuse and
      // stores the real one again, which also makes the victim's backup whole.
      const other = await writeBackup({
        ...common,
        keys: { tenant: newKey(), image },
        id: 'bak_1000000000000007',
        volumes: [root()],
      });
      assert.equal(other.chunksRepaired, 1);
      assert.equal(
        await restore(store, { tenant: victim, image }, 'bak_1000000000000006', path('out')),
        await sha256File(vol),
      );
    });

    test('the store holds no plaintext: not a file name, its content, or the tenant', async () => {
      n++;
      // A store of its own, so every object in it is this backup's.
      const store = await backend.make();
      const tenant = newKey();
      const id = 'bak_1000000000000005';
      const vol = path('vol');
      const size = await writeVolume(vol, 'rzrz', 'plaintext');
      const fileName = 'secret-plan-7f3a.txt';
      const sentence = 'The merger with Initech closes on the third of March.';
      // A directory entry and the file's content, as a filesystem would lay them out.
      const content = Buffer.concat([Buffer.from(`${fileName}\0`), text(sentence, CHUNK_SIZE / 2)]);
      await overwriteChunk(vol, 1, content);
      const tenantName = 'globex-skunkworks';
      await writeBackup({
        store,
        keys: { tenant },
        id,
        pointInTime: new Date().toISOString(),
        metadata: { ...metadata(tenantName), tenantId: 'ten_5ec7e75ec7e75ec7' },
        volumes: [fileSource(vol, size)],
      });
      // The same uncompressed, under another tenant key (ids would dedup to the objects above).
      await writeBackup({
        store,
        keys: { tenant: newKey() },
        id: 'bak_1000000000000008',
        pointInTime: new Date().toISOString(),
        metadata: { ...metadata(tenantName), tenantId: 'ten_5ec7e75ec7e75ec7' },
        volumes: [fileSource(vol, size)],
        zstdLevel: 0,
      });
      const needles = [fileName, sentence, 'Initech', tenantName, 'ten_5ec7e75ec7e75ec7'];
      const objects = await listAll(store);
      // Three chunks and a manifest per backup.
      assert.equal(objects.length, 8, objects.map((o) => o.key).join(' '));
      for (const { key } of objects) {
        const bytes = await readObject(store, key);
        // The bytes as stored, and whatever part of them decompresses: compression alone
        // (Huffman-coded literals) would hide the needles from a plain search.
        const views = [bytes, ...decodable(bytes)];
        for (const needle of needles) {
          assert.ok(!key.includes(needle), `key ${key} names ${needle}`);
          for (const view of views) {
            assert.equal(view.indexOf(needle), -1, `object ${key} holds ${needle}`);
            assert.equal(
              view.indexOf(Buffer.from(needle, 'utf16le')),
              -1,
              `object ${key} holds ${needle} (utf-16)`,
            );
          }
        }
        assert.match(key, /^(chunks\/[0-9a-f]{2}\/[0-9a-f]{64}|manifests\/bak_[0-9a-f]{16})$/);
      }
    });

    test('dedup: identical backups store each chunk once; image chunks of two tenants are stored once', async () => {
      n++;
      const vol = path('vol');
      const size = await writeVolume(vol, 'rtrt', 'dedup');
      const t1 = newKey();
      const image = imageKey(newKey(), 'sha256:0123');
      const common = { store, pointInTime: new Date().toISOString(), metadata: metadata() };
      const before = (await listAll(store)).length;
      await writeBackup({
        ...common,
        keys: { tenant: t1 },
        id: 'bak_2000000000000001',
        volumes: [fileSource(vol, size)],
      });
      await writeBackup({
        ...common,
        keys: { tenant: t1 },
        id: 'bak_2000000000000002',
        volumes: [fileSource(vol, size)],
      });
      // Four chunks and two manifests.
      assert.equal((await listAll(store)).length - before, 6);

      // Two tenants made from one image: chunks 0-2 are the image's own content, 3 the tenant's.
      const t2 = newKey();
      const t3 = newKey();
      const root = () => fileSource(vol, size, { name: 'root', imageChunk: (i) => i < 3 });
      const mid = (await listAll(store)).length;
      const r2 = await writeBackup({
        ...common,
        keys: { tenant: t2, image },
        id: 'bak_2000000000000003',
        volumes: [root()],
      });
      const r3 = await writeBackup({
        ...common,
        keys: { tenant: t3, image },
        id: 'bak_2000000000000004',
        volumes: [root()],
      });
      assert.equal(r2.manifest.volumes[0]!.domains, 'iiit');
      assert.deepEqual(
        r2.manifest.volumes[0]!.chunks.slice(0, 3),
        r3.manifest.volumes[0]!.chunks.slice(0, 3),
      );
      assert.notEqual(r2.manifest.volumes[0]!.chunks[3], r3.manifest.volumes[0]!.chunks[3]);
      assert.equal(r3.chunksNew, 1);
      assert.equal(r3.chunksReused, 3);
      // Three image chunks, one tenant chunk each, two manifests.
      assert.equal((await listAll(store)).length - mid, 7);
      const expected = await sha256File(vol);
      assert.equal(await restore(store, { tenant: t2, image }, 'bak_2000000000000003', path('r2')), expected);
      assert.equal(await restore(store, { tenant: t3, image }, 'bak_2000000000000004', path('r3')), expected);
    });
  });
}
