/**
 * Manifests and chunks are hostile input even when they authenticate: whoever held a tenant
 * key for one job (a host agent) could have sealed anything. These objects are built by hand
 * from the documented format with node:crypto, so they are exactly what such an attacker could
 * write, and each must end in a clean BACKUP_CORRUPT with bounded memory.
 */
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import {
  CHUNK_SIZE,
  chunkId,
  chunkObjectKey,
  MAX_CHUNK_OBJECT_BYTES,
  MAX_VOLUME_BYTES,
  newKey,
  readManifest,
  restoreVolume,
  sealChunk,
  subkeys,
  verifyBackup,
  writeBackup,
} from '@warren/backup';
import { createObjectStore } from '@warren/object-store';
import { WarrenError } from '@warren/protocol';
import { chunkOf, metadata, readObject } from '../helpers/backup-volumes.ts';

const dir = await mkdtemp(join(tmpdir(), 'wbackup-hostile-'));
const store = createObjectStore({ kind: 'fs', root: join(dir, 'objects') });
after(() => rm(dir, { recursive: true, force: true }));

const ID = 'bak_4000000000000001';

/** A chunk object as the format describes it, with any flags and body the attacker likes. */
function rawChunk(key: Buffer, id: string, flags: number, body: Buffer): Buffer {
  const k = subkeys(key);
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', k.chunkSeal, nonce);
  c.setAAD(Buffer.concat([Buffer.from('WBC1'), Buffer.of(flags), Buffer.from(id)]));
  return Buffer.concat([
    Buffer.from('WBC1'),
    Buffer.of(flags),
    nonce,
    c.update(body),
    c.final(),
    c.getAuthTag(),
  ]);
}

/** A manifest object as the format describes it, around any (gzip) body. */
function rawManifest(key: Buffer, backupId: string, gzipBody: Buffer): Buffer {
  const k = subkeys(key);
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', k.manifestSeal, nonce);
  c.setAAD(Buffer.concat([Buffer.from('WBM1'), Buffer.from(k.fingerprint), Buffer.from(backupId)]));
  return Buffer.concat([
    Buffer.from('WBM1'),
    Buffer.from(k.fingerprint),
    nonce,
    c.update(gzipBody),
    c.final(),
    c.getAuthTag(),
  ]);
}

function corrupt(...mentions: (string | RegExp)[]) {
  return (err: unknown) => {
    assert.ok(err instanceof WarrenError, String(err));
    assert.equal(err.code, 'BACKUP_CORRUPT', err.message);
    for (const m of mentions) assert.match(err.message, typeof m === 'string' ? new RegExp(m) : m);
    return true;
  };
}

const goodManifest = () => ({
  version: 1 as const,
  id: ID,
  createdAt: '2026-12-02T09:00:00.000Z',
  pointInTime: '2026-12-02T09:00:00.000Z',
  metadata: metadata(),
  chunkSize: CHUNK_SIZE,
  imageFingerprint: null,
  volumes: [{ name: 'data', size: CHUNK_SIZE, chunks: [null], domains: '0' }],
});

describe('backup: hostile chunks', () => {
  // First in the file, so the peak RSS it checks is not hidden by an earlier, larger peak.
  test('a chunk that decompresses to 1 GiB fails at CHUNK_SIZE, in bounded memory', async () => {
    const tenant = newKey();
    // 64 concatenated frames of 16 MiB of zeros: a few KiB that decompress to 1 GiB.
    const frame = zstdCompressSync(Buffer.alloc(16 * CHUNK_SIZE));
    const bomb = Buffer.concat(Array.from({ length: 64 }, () => frame));
    assert.ok(bomb.length < 64 * 1024, `bomb of ${bomb.length} bytes`);
    const id = chunkId(subkeys(tenant), Buffer.from('anything'));
    const key = chunkObjectKey(id);
    await store.put(key, rawChunk(tenant, id, 1, bomb));
    const peakBefore = process.resourceUsage().maxRSS;
    const manifest = {
      ...goodManifest(),
      volumes: [{ name: 'data' as const, size: CHUNK_SIZE, chunks: [id], domains: 't' }],
    };
    await assert.rejects(
      restoreVolume({
        store,
        keys: { tenant },
        manifest,
        backupId: ID,
        volume: 'data',
        write: async () => {},
      }),
      corrupt(ID, key, 'decompress'),
    );
    const grownKiB = process.resourceUsage().maxRSS - peakBefore;
    assert.ok(grownKiB < 256 * 1024, `peak memory grew by ${grownKiB} KiB`);
  });

  test('oversized, unflagged, wrongly flagged and poisoned chunks are each BACKUP_CORRUPT', async () => {
    const tenant = newKey();
    const keys = subkeys(tenant);
    const good = chunkOf('t', 'hostile');
    const id = chunkId(keys, good);
    const key = chunkObjectKey(id);
    const manifest = {
      ...goodManifest(),
      volumes: [{ name: 'data' as const, size: CHUNK_SIZE, chunks: [id], domains: 't' }],
    };
    const restore = () =>
      restoreVolume({
        store,
        keys: { tenant },
        manifest,
        backupId: ID,
        volume: 'data',
        write: async () => {},
      });

    // An object larger than any chunk can be: reading stops at the bound.
    await store.put(key, Buffer.alloc(MAX_CHUNK_OBJECT_BYTES + 1));
    await assert.rejects(restore(), corrupt(key, 'larger than'));
    // Authentic, uncompressed, but more than a chunk.
    await store.put(key, rawChunk(tenant, id, 0, Buffer.alloc(CHUNK_SIZE + 1, 1)));
    await assert.rejects(restore(), corrupt(key, 'larger than|impossible size|more than'));
    // A flag this version does not know.
    await store.put(key, rawChunk(tenant, id, 0x80, good));
    await assert.rejects(restore(), corrupt(key, 'unknown flags'));
    // Poisoned: sealed correctly under the id of `good`, but holding other content. This is
    // what a host agent holding an image key could plant for other tenants to dedup against.
    await store.put(key, await sealChunk(keys, id, chunkOf('t', 'poison')));
    await assert.rejects(restore(), corrupt(key, 'content hash'));
    // A short chunk where the manifest needs a whole one.
    const short = good.subarray(0, 100);
    const shortId = chunkId(keys, short);
    await store.put(chunkObjectKey(shortId), await sealChunk(keys, shortId, short));
    await assert.rejects(
      restoreVolume({
        store,
        keys: { tenant },
        manifest: { ...manifest, volumes: [{ ...manifest.volumes[0]!, chunks: [shortId] }] },
        backupId: ID,
        volume: 'data',
        write: async () => {},
      }),
      corrupt(chunkObjectKey(shortId), 'needs'),
    );
  });
});

describe('backup: hostile manifests', () => {
  const tenant = newKey();
  const key = `manifests/${ID}`;
  const cases: { what: string; json: unknown; mention: RegExp }[] = [
    {
      what: 'a volume larger than the format allows',
      json: { ...goodManifest(), volumes: [{ name: 'data', size: 2 ** 53 - 1, chunks: [], domains: '' }] },
      mention: /not a valid manifest/,
    },
    {
      what: 'a huge volume with no chunks listed',
      json: {
        ...goodManifest(),
        volumes: [{ name: 'data', size: MAX_VOLUME_BYTES, chunks: [], domains: '' }],
      },
      mention: /chunks/,
    },
    {
      what: 'more chunks than the size has',
      json: {
        ...goodManifest(),
        volumes: [{ name: 'data', size: 1, chunks: Array(1000).fill(null), domains: '0'.repeat(1000) }],
      },
      mention: /chunks/,
    },
    {
      what: 'a negative size',
      json: { ...goodManifest(), volumes: [{ name: 'data', size: -1, chunks: [], domains: '' }] },
      mention: /not a valid manifest/,
    },
    {
      what: 'ids and domains that disagree',
      json: {
        ...goodManifest(),
        volumes: [{ name: 'data', size: CHUNK_SIZE, chunks: [null], domains: 't' }],
      },
      mention: /disagree/,
    },
    {
      what: 'a chunk id that names a path',
      json: {
        ...goodManifest(),
        volumes: [{ name: 'data', size: CHUNK_SIZE, chunks: ['../../../etc/passwd'], domains: 't' }],
      },
      mention: /not a valid manifest/,
    },
    {
      what: 'another chunk size',
      json: { ...goodManifest(), chunkSize: 4096 },
      mention: /not a valid manifest/,
    },
    {
      what: 'a volume listed twice',
      json: { ...goodManifest(), volumes: [goodManifest().volumes[0], goodManifest().volumes[0]] },
      mention: /twice/,
    },
    {
      what: 'image chunks without an image key',
      json: {
        ...goodManifest(),
        volumes: [{ name: 'data', size: CHUNK_SIZE, chunks: ['a'.repeat(64)], domains: 'i' }],
      },
      mention: /image/,
    },
    {
      what: 'another backup inside',
      json: { ...goodManifest(), id: 'bak_4000000000000002' },
      mention: /names another backup/,
    },
    { what: 'unknown fields', json: { ...goodManifest(), extra: 1 }, mention: /not a valid manifest/ },
    { what: 'not an object', json: [[[[]]]], mention: /not a valid manifest/ },
  ];
  for (const c of cases) {
    test(`${c.what}: BACKUP_CORRUPT`, async () => {
      await store.put(key, rawManifest(tenant, ID, gzipSync(JSON.stringify(c.json))));
      await assert.rejects(readManifest(store, tenant, ID), corrupt(ID, key, c.mention));
      const verdict = await verifyBackup({ store, keys: { tenant }, id: ID });
      assert.deepEqual(
        verdict.problems.map((p) => p.object),
        [key],
      );
    });
  }

  test('the good manifest these are made from opens (so the cases above fail for their reason)', async () => {
    await store.put(key, rawManifest(tenant, ID, gzipSync(JSON.stringify(goodManifest()))));
    assert.equal((await readManifest(store, tenant, ID)).volumes[0]!.size, CHUNK_SIZE);
  });

  test('not JSON, not gzip, and a gzip bomb past the JSON bound', async () => {
    await store.put(key, rawManifest(tenant, ID, gzipSync('{"version": 1,')));
    await assert.rejects(readManifest(store, tenant, ID), corrupt('not JSON'));
    await store.put(key, rawManifest(tenant, ID, Buffer.from('plain text, no gzip')));
    await assert.rejects(readManifest(store, tenant, ID), corrupt('decompress'));
    // 256 gzip members of 1 MiB of spaces each (gunzip reads them as one stream): 256 MiB in
    // about 256 KiB, past MAX_MANIFEST_JSON_BYTES, made without holding 256 MiB here (that
    // would raise the peak this test compares against).
    const member = gzipSync(Buffer.alloc(CHUNK_SIZE, 0x20), { level: 9 });
    const bomb = Buffer.concat(Array.from({ length: 256 }, () => member));
    const peakBefore = process.resourceUsage().maxRSS;
    await store.put(key, rawManifest(tenant, ID, bomb));
    await assert.rejects(readManifest(store, tenant, ID), corrupt('decompress'));
    const grownKiB = process.resourceUsage().maxRSS - peakBefore;
    assert.ok(grownKiB < 400 * 1024, `peak memory grew by ${grownKiB} KiB`);
  });

  test("a manifest copied over another backup's name does not open", async () => {
    const own = newKey();
    await writeBackup({
      store,
      keys: { tenant: own },
      id: 'bak_4000000000000003',
      pointInTime: new Date().toISOString(),
      metadata: metadata(),
      volumes: [],
    });
    await store.put(
      'manifests/bak_4000000000000004',
      await readObject(store, 'manifests/bak_4000000000000003'),
    );
    await assert.rejects(
      readManifest(store, own, 'bak_4000000000000004'),
      corrupt('bak_4000000000000004', 'authenticate'),
    );
  });
});
