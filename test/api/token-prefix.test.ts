/**
 * Token prefixes as stored and listed (issue 9, finding 1): `GET /v1/keys` shows the kind
 * prefix and 6 characters of each key, also for the about half of all tokens whose base64url
 * body contains `_`; and migration 0005 cuts back prefixes that an older version stored.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { migrationProvider, openStore, SqliteStoreDialect } from '@warren/control-plane';
import { Kysely } from 'kysely';
import { Migrator } from 'kysely/migration';
import { call, FAKE_IMAGE, FakeAgent, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';

let t: TestControlPlane;
let agent: FakeAgent;
const dir = await mkdtemp(join(tmpdir(), 'wprefix-'));

before(async () => {
  t = await openTestControlPlane();
  agent = await new FakeAgent('prefix-host', { vcpus: 8, memoryMiB: 16384, diskMiB: 100_000 }).start(
    t.url,
    t.joinToken,
  );
  const created = await call(t.url, 'POST', '/v1/tenants', {
    token: t.adminToken,
    body: { name: 'prefixes', image: FAKE_IMAGE },
  });
  assert.equal(created.status, 202, created.text);
});

after(async () => {
  await agent?.stop();
  await t?.close();
  await rm(dir, { recursive: true, force: true });
});

test('GET /v1/keys shows 6 characters of each key, also of keys whose body contains `_`', async () => {
  const tokens: string[] = [];
  // Keys until 5 have a `_` in their body (about every other one does; 400 is a generous bound).
  while (tokens.filter((k) => k.slice('wrn_key_'.length).includes('_')).length < 5) {
    assert.ok(tokens.length < 400, 'no token with `_` in its body among 400');
    const key = await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: 'prefixes' } });
    assert.equal(key.status, 201, key.text);
    assert.equal(key.body.key.prefix, key.body.token.slice(0, 'wrn_key_'.length + 6));
    tokens.push(key.body.token);
  }
  const list = await call(t.url, 'GET', '/v1/keys?tenant=prefixes', { token: t.adminToken });
  assert.equal(list.status, 200);
  assert.equal(list.body.keys.length, tokens.length);
  for (const k of list.body.keys) assert.match(k.prefix, /^wrn_key_[A-Za-z0-9_-]{6}$/);
  for (const token of tokens) {
    // Not even 4 characters past what the prefix shows appear anywhere in the answer.
    assert.ok(!list.text.includes(token.slice(8, 8 + 10)), `${token} leaks through the key list`);
  }
  const shown = new Set(list.body.keys.map((k: { prefix: string }) => k.prefix));
  for (const token of tokens) assert.ok(shown.has(token.slice(0, 14)));
});

test('migration 0005 cuts prefixes stored by an older version back to the kind prefix and 6 characters', async () => {
  const path = join(dir, 'old.db');
  const dialect = new SqliteStoreDialect(path);
  const old = new Kysely<{ api_keys: Record<string, unknown> }>({ dialect: dialect.createKyselyDialect() });
  const migrated = await new Migrator({ db: old, provider: migrationProvider(dialect) }).migrateTo(
    '0004-indexes',
  );
  assert.equal(migrated.error, undefined);
  const at = new Date().toISOString();
  // What the old displayPrefix stored: up to 6 characters after the body's last `_`.
  const rows = [
    ['key_0000000000000001', 'tenant', 'wrn_key_Ab3_x9Zq-Lm_K0pQ7wRt2_vYe', 'h1'],
    ['key_0000000000000002', 'admin', 'wrn_admin_QWERTY_uiop-asdf_ghjklz', 'h2'],
    ['key_0000000000000003', 'join', 'wrn_join_a_b_c_d_e_f_g_h_ijklmn', 'h3'],
    ['key_0000000000000004', 'tenant', 'wrn_key_abcdef', 'h4'],
  ] as const;
  for (const [id, kind, prefix, hash] of rows) {
    await old
      .insertInto('api_keys')
      .values({
        id,
        kind,
        name: id,
        tenant_id: null,
        host_id: null,
        token_hash: hash,
        prefix,
        created_at: at,
      })
      .execute();
  }
  await old.destroy();

  const store = await openStore(dialect);
  try {
    const after = await store.db.selectFrom('api_keys').selectAll().orderBy('id').execute();
    assert.deepEqual(
      after.map((r) => [r.id, r.prefix, r.bootstrap, r.single_use, r.expires_at]),
      [
        ['key_0000000000000001', 'wrn_key_Ab3_x9', 0, 0, null],
        ['key_0000000000000002', 'wrn_admin_QWERTY', 1, 0, null],
        ['key_0000000000000003', 'wrn_join_a_b_c_', 1, 0, null],
        ['key_0000000000000004', 'wrn_key_abcdef', 0, 0, null],
      ],
    );
  } finally {
    await store.close();
  }
});
