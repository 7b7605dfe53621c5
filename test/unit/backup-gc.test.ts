/**
 * Garbage collection on both stores: exactly the objects no live backup needs are deleted,
 * chunks of a backup that never committed its manifest are among them, and nothing at all is
 * deleted when a live manifest cannot be opened.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { chunkObjectKey, collectGarbage, type Manifest, newKey, writeBackup } from '@warren/backup';
import type { ObjectStore } from '@warren/object-store';
import { WarrenError } from '@warren/protocol';
import {
  backends,
  chunkOf,
  fileSource,
  listAll,
  metadata,
  overwriteChunk,
  readObject,
  writeVolume,
} from '../helpers/backup-volumes.ts';

const env = await backends();
after(() => env.cleanup());

const keysOf = (m: Manifest) =>
  m.volumes.flatMap((v) => v.chunks.filter((c): c is string => c !== null).map(chunkObjectKey));

async function backup(store: ObjectStore, tenant: Buffer, id: string, vol: string, size: number) {
  return writeBackup({
    store,
    keys: { tenant },
    id,
    pointInTime: new Date().toISOString(),
    metadata: metadata(),
    volumes: [fileSource(vol, size)],
  });
}

for (const backend of env.list) {
  describe(`backup garbage collection: ${backend.label}`, () => {
    test('deleting one of two backups: GC removes exactly the chunks only it referenced', async () => {
      const store = await backend.make();
      const tenant = newKey();
      const vol = join(env.dir, `gc-${backend.label}-a`);
      const size = await writeVolume(vol, 'rtrtz', 'gc-two');
      const a = await backup(store, tenant, 'bak_3000000000000001', vol, size);
      await overwriteChunk(vol, 1, chunkOf('r', 'gc-two-b/1'));
      await overwriteChunk(vol, 4, chunkOf('t', 'gc-two-b/4'));
      const b = await backup(store, tenant, 'bak_3000000000000002', vol, size);
      const onlyA = keysOf(a.manifest).filter((k) => !keysOf(b.manifest).includes(k));
      assert.equal(onlyA.length, 1);

      const result = await collectGarbage({
        store,
        live: [{ id: 'bak_3000000000000002', tenantKey: tenant }],
      });
      const left = (await listAll(store)).map((o) => o.key);
      assert.deepEqual(
        left.sort(),
        [...new Set(keysOf(b.manifest)), 'manifests/bak_3000000000000002'].sort(),
      );
      assert.equal(result.chunksDeleted, 1);
      assert.equal(result.manifestsDeleted, 1);
      assert.equal(result.chunksKept, 5);
      assert.equal(result.liveBackups, 1);
      assert.ok(result.bytesDeleted > 0);

      // A second run finds nothing more.
      const again = await collectGarbage({
        store,
        live: [{ id: 'bak_3000000000000002', tenantKey: tenant }],
      });
      assert.equal(again.chunksDeleted + again.manifestsDeleted, 0);
    });

    test('chunks of a backup aborted before its manifest are garbage; junk under the prefixes too', async () => {
      const store = await backend.make();
      const tenant = newKey();
      const vol = join(env.dir, `gc-${backend.label}-half`);
      const size = await writeVolume(vol, 'rrrrrr', 'gc-half');
      const kept = await backup(store, tenant, 'bak_3000000000000003', vol, 2 * 1024 * 1024);

      const controller = new AbortController();
      const source = fileSource(vol, size);
      const read = source.read.bind(source);
      // The source is read in order with concurrency 1: stop after the fourth chunk.
      source.read = async (offset, length) => {
        const buf = await read(offset, length);
        if (source.reads.length === 4) controller.abort(new Error('the operator cancelled the backup'));
        return buf;
      };
      await assert.rejects(
        writeBackup({
          store,
          keys: { tenant },
          id: 'bak_3000000000000004',
          pointInTime: new Date().toISOString(),
          metadata: metadata(),
          volumes: [source],
          concurrency: 1,
          signal: controller.signal,
        }),
        /cancelled/,
      );
      const half = (await listAll(store)).map((o) => o.key);
      assert.ok(!half.includes('manifests/bak_3000000000000004'), 'an aborted backup has no manifest');
      // Chunks 0 and 1 are the kept backup's; 2 and 3 were uploaded by the aborted one.
      assert.equal(half.length, 2 + 2 + 1, half.join(' '));
      await store.put('chunks/zz/not-a-chunk', Buffer.from('junk'));
      await store.put('manifests/not-a-backup', Buffer.from('junk'));

      const result = await collectGarbage({
        store,
        live: [{ id: 'bak_3000000000000003', tenantKey: tenant }],
      });
      assert.equal(result.chunksDeleted, 3);
      assert.equal(result.manifestsDeleted, 1);
      const left = (await listAll(store)).map((o) => o.key);
      assert.deepEqual(left.sort(), [...keysOf(kept.manifest), 'manifests/bak_3000000000000003'].sort());
    });

    test('GC deletes nothing when a live manifest is damaged, missing or opens with no key given', async () => {
      const store = await backend.make();
      const tenant = newKey();
      const vol = join(env.dir, `gc-${backend.label}-refuse`);
      const size = await writeVolume(vol, 'rtr', 'gc-refuse');
      await backup(store, tenant, 'bak_3000000000000005', vol, size);
      await overwriteChunk(vol, 0, chunkOf('t', 'gc-refuse-2/0'));
      await backup(store, tenant, 'bak_3000000000000006', vol, size);
      await store.put('chunks/ab/garbage', Buffer.from('junk'));
      const before = await listAll(store);
      const live = [
        { id: 'bak_3000000000000005', tenantKey: tenant },
        { id: 'bak_3000000000000006', tenantKey: tenant },
      ];
      const refuses = async (liveNow: typeof live, code: string) => {
        await assert.rejects(collectGarbage({ store, live: liveNow }), (err: unknown) => {
          assert.ok(err instanceof WarrenError, String(err));
          assert.equal(err.code, code, err.message);
          assert.match(err.message, /deleted nothing/);
          return true;
        });
        assert.deepEqual(await listAll(store), before, 'GC deleted something on partial knowledge');
      };

      // The second live backup's manifest was damaged in the store.
      const key = 'manifests/bak_3000000000000006';
      const original = await readObject(store, key);
      const damaged = Buffer.from(original);
      damaged[damaged.length - 3]! ^= 0xff;
      await backend.replace(store, key, damaged);
      await refuses(live, 'BACKUP_CORRUPT');
      await backend.replace(store, key, original);

      // A live backup opened with the wrong key (say, a mix-up of tenants in the catalog).
      await refuses([live[0]!, { id: 'bak_3000000000000006', tenantKey: newKey() }], 'BACKUP_KEY_REJECTED');
      // A live backup whose manifest is not in the store at all.
      await refuses([...live, { id: 'bak_3000000000000007', tenantKey: tenant }], 'BACKUP_CORRUPT');

      // With everything readable, only the junk goes.
      const result = await collectGarbage({ store, live });
      assert.equal(result.chunksDeleted, 1);
      assert.equal(result.manifestsDeleted, 0);
    });
  });
}
