/**
 * Tenant secrets through the control plane's API, with real SQLite and a real master key file;
 * fake host agents (the agent is outside what this tests; test/vm/secrets.test.ts runs the real
 * one). Covered: set, list, remove and versions; values never returned; name and size
 * validation with clear errors; the per-tenant cap; tenant scoping (another tenant's key, a
 * host token, the agent route for a tenant on another host); audit entries naming secret and
 * version, never the value; the desired list's generation; encryption at rest (no value in any
 * database file or log, a row moved to another name does not open); master-key rotation
 * (secrets and backups open with the new key afterwards, not with the old one; a wrong old key
 * changes nothing).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { imageKey, keyFingerprint, unwrapTenantKey } from '@warren/backup';
import { imageSeed, loadConfig, openSecret, rotateMasterKeyFiles } from '@warren/control-plane';
import { MAX_SECRET_VALUE_BYTES, MAX_SECRETS_PER_TENANT } from '@warren/protocol';
import {
  call,
  convergeAllRunning,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { until } from '../helpers/until.ts';

const SETTINGS = { backupPollMs: 20, backupScheduleMs: 0, backupGcIntervalMs: 0, backupDrillIntervalMs: 0 };
const CAPACITY = { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 };
/** Made at run time, so no earlier file holds them. */
const value = (tag: string) => `wrn-${tag}-${randomBytes(12).toString('hex')}`;

let t: TestControlPlane;
let agent: FakeAgent;
let other: FakeAgent;
const logs: string[] = [];
const keys: Record<string, string> = {};
const ids: Record<string, string> = {};
const used: string[] = [];

async function tenant(c: TestControlPlane, name: string): Promise<void> {
  const { created, key } = await createTenantWithKey(c, { name });
  keys[name] = key.token;
  ids[name] = created.tenant.id;
}

function put(name: string, secret: string, body: object, token = keys[name]!) {
  return call(t.url, 'PUT', `/v1/tenants/${name}/secrets/${secret}`, { token, body });
}

async function setOk(name: string, secret: string, v: string): Promise<{ version: number }> {
  used.push(v);
  const r = await put(name, secret, { value: v });
  assert.equal(r.status, 200, r.text);
  assert.ok(!r.text.includes(v), 'the answer repeats the value');
  return r.body;
}

function agentSecrets(a: FakeAgent, tenantId: string, c = t) {
  return call(c.url, 'POST', '/v1/agent/secrets', { token: a.token, body: { tenantId } });
}

async function desiredGeneration(a: FakeAgent, tenantId: string): Promise<number> {
  const hb = await a.heartbeat();
  return hb.tenants.find((x) => x.tenantId === tenantId)!.secretsGeneration;
}

before(async () => {
  t = await openTestControlPlane(SETTINGS, undefined, { log: (m) => logs.push(m) });
  // Two hosts of capacity for one tenant each: `alpha` lands on one, `beta` on the other.
  agent = await new FakeAgent('sec-host-a', { vcpus: 1, memoryMiB: 1024, diskMiB: 10_000 }).start(
    t.url,
    t.joinToken,
  );
  await tenant(t, 'alpha');
  other = await new FakeAgent('sec-host-b', CAPACITY).start(t.url, t.joinToken);
  await tenant(t, 'beta');
  await convergeAllRunning(t, [agent, other]);
});

after(async () => {
  await agent?.stop();
  await other?.stop();
  await t?.close();
});

describe('tenant secrets', () => {
  test('set, list, set again, remove: versions grow, no value ever comes back, the host sees each change', async () => {
    const v1 = value('a1');
    const gen0 = await desiredGeneration(agent, ids.alpha!);
    const first = await setOk('alpha', 'API_TOKEN', v1);
    assert.equal(first.version, 1);
    assert.equal(await desiredGeneration(agent, ids.alpha!), gen0 + 1);
    const v2 = value('a2');
    const second = await setOk('alpha', 'API_TOKEN', v2);
    assert.equal(second.version, 2);
    await setOk('alpha', 'DB_URL', value('db'));
    const list = await call(t.url, 'GET', '/v1/tenants/alpha/secrets', { token: keys.alpha });
    assert.equal(list.status, 200, list.text);
    assert.deepEqual(
      list.body.secrets.map((s: { name: string; version: number }) => [s.name, s.version]),
      [
        ['API_TOKEN', 2],
        ['DB_URL', 1],
      ],
    );
    for (const s of list.body.secrets)
      assert.deepEqual(Object.keys(s).sort(), ['createdAt', 'name', 'updatedAt', 'version']);
    for (const v of used) assert.ok(!list.text.includes(v));

    // The host the tenant is placed on gets the values (base64), at the desired generation.
    const got = await agentSecrets(agent, ids.alpha!);
    assert.equal(got.status, 200, got.text);
    assert.equal(got.body.generation, await desiredGeneration(agent, ids.alpha!));
    const byName = Object.fromEntries(
      got.body.secrets.map((s: { name: string; value: string }) => [
        s.name,
        Buffer.from(s.value, 'base64').toString(),
      ]),
    );
    assert.equal(byName.API_TOKEN, v2);

    const removed = await call(t.url, 'DELETE', '/v1/tenants/alpha/secrets/DB_URL', { token: keys.alpha });
    assert.equal(removed.status, 204, removed.text);
    const again = await call(t.url, 'DELETE', '/v1/tenants/alpha/secrets/DB_URL', { token: keys.alpha });
    assert.equal(again.status, 404);
    assert.match(again.body.error.message, /has no secret DB_URL/);
    const after = await agentSecrets(agent, ids.alpha!);
    assert.deepEqual(
      after.body.secrets.map((s: { name: string }) => s.name),
      ['API_TOKEN'],
    );
    assert.equal(after.body.generation, got.body.generation + 1);
  });

  test('names and sizes are checked, with errors that say what is allowed and never repeat the value', async () => {
    for (const bad of ['lower', '1ABC', 'A-B', `A${'B'.repeat(64)}`, 'A.B']) {
      const r = await put('alpha', encodeURIComponent(bad), { value: 'x' });
      assert.equal(r.status, 400, `${bad}: ${r.text}`);
      assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
      assert.match(r.body.error.message, /secret name is 1 to 64 characters of upper-case letters/);
    }
    const big = `wrn-big-${'x'.repeat(MAX_SECRET_VALUE_BYTES)}`;
    const tooBig = await put('alpha', 'BIG', { value: big });
    assert.equal(tooBig.status, 400, tooBig.text.slice(0, 300));
    assert.match(tooBig.body.error.message, new RegExp(`at most ${MAX_SECRET_VALUE_BYTES} bytes`));
    assert.ok(!tooBig.text.includes('xxxxxxxx'), 'the error repeats the value');
    // Multi-byte characters count as bytes.
    const wide = await put('alpha', 'WIDE', { value: 'é'.repeat(MAX_SECRET_VALUE_BYTES / 2 + 1) });
    assert.equal(wide.status, 400);
    const exact = await put('alpha', 'EXACT', { value: 'y'.repeat(MAX_SECRET_VALUE_BYTES) });
    assert.equal(exact.status, 200, exact.text);
    const binary = randomBytes(300);
    const b64 = await put('alpha', 'BINARY', { value: binary.toString('base64'), encoding: 'base64' });
    assert.equal(b64.status, 200, b64.text);
    const notB64 = await put('alpha', 'BINARY', { value: 'not base64!', encoding: 'base64' });
    assert.equal(notB64.status, 400);
    assert.match(notB64.body.error.message, /base64/);
    const extra = await put('alpha', 'EXTRA', { value: 'v', name: 'x' });
    assert.equal(extra.status, 400);
    const got = await agentSecrets(agent, ids.alpha!);
    const bin = got.body.secrets.find((s: { name: string }) => s.name === 'BINARY');
    assert.ok(Buffer.from(bin.value, 'base64').equals(binary));
    for (const n of ['EXACT', 'BINARY'])
      assert.equal(
        (await call(t.url, 'DELETE', `/v1/tenants/alpha/secrets/${n}`, { token: keys.alpha })).status,
        204,
      );
  });

  test(`a tenant holds at most ${MAX_SECRETS_PER_TENANT} secrets`, async () => {
    await tenant(t, 'many');
    for (let i = 0; i < MAX_SECRETS_PER_TENANT; i++) {
      const r = await put('many', `S${i}`, { value: 'v' });
      assert.equal(r.status, 200, r.text);
    }
    const over = await put('many', 'ONE_MORE', { value: 'v' });
    assert.equal(over.status, 422, over.text);
    assert.equal(over.body.error.code, 'QUOTA_EXCEEDED');
    // Setting an existing one again is no new secret.
    assert.equal((await put('many', 'S0', { value: 'w' })).status, 200);
  });

  test("a tenant's key reaches only its own secrets; hosts only their own tenants'", async () => {
    const v = value('b');
    await setOk('beta', 'BETA_ONLY', v);
    for (const [method, path] of [
      ['GET', '/v1/tenants/beta/secrets'],
      ['PUT', '/v1/tenants/beta/secrets/BETA_ONLY'],
      ['DELETE', '/v1/tenants/beta/secrets/BETA_ONLY'],
    ] as const) {
      const r = await call(t.url, method, path, { token: keys.alpha, body: { value: 'stolen' } });
      assert.equal(r.status, 404, `${method} ${path}: ${r.text}`);
      const anon = await call(t.url, method, path, { body: { value: 'x' } });
      assert.equal(anon.status, 401);
      const host = await call(t.url, method, path, { token: agent.token, body: { value: 'x' } });
      assert.equal(host.status, 403, host.text);
    }
    // alpha's host cannot fetch beta's secrets (beta is on the other host); a tenant key cannot use the agent route.
    const cross = await agentSecrets(agent, ids.beta!);
    assert.equal(cross.status, 404, cross.text);
    assert.ok(!cross.text.includes(v));
    const asTenant = await call(t.url, 'POST', '/v1/agent/secrets', {
      token: keys.beta,
      body: { tenantId: ids.beta },
    });
    assert.equal(asTenant.status, 403);
    const mine = await agentSecrets(other, ids.beta!);
    assert.equal(mine.status, 200);
    // The admin may manage any tenant's.
    const admin = await call(t.url, 'GET', '/v1/tenants/beta/secrets', { token: t.adminToken });
    assert.deepEqual(
      admin.body.secrets.map((s: { name: string }) => s.name),
      ['BETA_ONLY'],
    );
  });

  test('audit entries name the secret and its version, never the value', async () => {
    const v = value('audit');
    await setOk('alpha', 'AUDITED', v);
    await setOk('alpha', 'AUDITED', v);
    await call(t.url, 'DELETE', '/v1/tenants/alpha/secrets/AUDITED', { token: keys.alpha });
    const audit = await call(t.url, 'GET', `/v1/audit?tenant=${ids.alpha}&limit=200`, {
      token: t.adminToken,
    });
    const mine = audit.body.events.filter((e: { target: string }) => e.target.startsWith('alpha:AUDITED'));
    assert.deepEqual(mine.map((e: { action: string; target: string }) => `${e.action} ${e.target}`).sort(), [
      'tenant.secret.delete alpha:AUDITED@v2',
      'tenant.secret.set alpha:AUDITED@v1',
      'tenant.secret.set alpha:AUDITED@v2',
    ]);
    for (const u of used) assert.ok(!audit.text.includes(u), 'a value in the audit log');
    // A refused probe is recorded against the prober, by name only.
    await call(t.url, 'PUT', '/v1/tenants/beta/secrets/PROBE', { token: keys.alpha, body: { value: v } });
    const trail = await call(t.url, 'GET', `/v1/audit?tenant=${ids.alpha}&limit=200`, {
      token: t.adminToken,
    });
    assert.ok(!trail.text.includes(v));
  });

  test('at rest: no value in any database file or log line; a row moved to another name does not open', async () => {
    const v = value('rest');
    await setOk('alpha', 'AT_REST', v);
    await setOk('alpha', 'DECOY', value('decoy'));
    const needles = used.flatMap((u) => [Buffer.from(u), Buffer.from(Buffer.from(u).toString('base64'))]);
    for (const entry of await readdir(t.dataDir, { withFileTypes: true, recursive: true })) {
      if (!entry.isFile()) continue;
      const bytes = await readFile(join(entry.parentPath, entry.name));
      for (const n of needles) assert.ok(!bytes.includes(n), `${entry.name} holds a secret value`);
    }
    for (const n of needles) assert.ok(!logs.join('\n').includes(n.toString()), 'a value in the log');
    // The sealed value and its wrapped key are bound to tenant, name and version: copied onto
    // another secret's row, they do not open (SECRET_KEY_REJECTED), and nothing else is served.
    const db = t.cp.store.db;
    const row = await db
      .selectFrom('tenant_secrets')
      .selectAll()
      .where('tenant_id', '=', ids.alpha!)
      .where('name', '=', 'AT_REST')
      .executeTakeFirstOrThrow();
    await db
      .updateTable('tenant_secrets')
      .set({ sealed: row.sealed, wrapped_key: row.wrapped_key, version: row.version })
      .where('tenant_id', '=', ids.alpha!)
      .where('name', '=', 'DECOY')
      .execute();
    const moved = await agentSecrets(agent, ids.alpha!);
    assert.equal(moved.status, 500, moved.text);
    assert.equal(moved.body.error.code, 'SECRET_KEY_REJECTED');
    assert.match(moved.body.error.message, /secret DECOY/);
    assert.ok(!moved.text.includes(v));
    await call(t.url, 'DELETE', '/v1/tenants/alpha/secrets/DECOY', { token: keys.alpha });
    assert.equal((await agentSecrets(agent, ids.alpha!)).status, 200);
  });
});

describe('master-key rotation', () => {
  test('rewraps secrets and backup keys in one go: they open with the new key, not the old; a wrong old key changes nothing', async () => {
    const d = await mkdtemp(join(tmpdir(), 'wrot-'));
    let c = await openTestControlPlane(SETTINGS, d);
    const h = (await new FakeAgent('rot-host', CAPACITY).start(c.url, c.joinToken)).useObjectStore(
      join(d, 'objects'),
    );
    try {
      await tenant(c, 'rho');
      await convergeAllRunning(c, [h]);
      const v = value('rot');
      const s = await call(c.url, 'PUT', '/v1/tenants/rho/secrets/ROTATED', {
        token: keys.rho,
        body: { value: v },
      });
      assert.equal(s.status, 200, s.text);
      const b = await call(c.url, 'POST', '/v1/tenants/rho/backups', { token: keys.rho, body: {} });
      assert.equal(b.status, 202, b.text);
      await until('the backup completes', async () => {
        const x = await call(c.url, 'GET', `/v1/tenants/rho/backups/${b.body.id}`, { token: keys.rho });
        return x.body.state === 'complete';
      });
      await c.cp.backups.settled();
      const oldKey = await readFile(join(d, 'master.key'));
      const seedBefore = imageKey(await imageSeed(c.cp.store.db, oldKey), 'sha256:feed');

      // Refused while the control plane runs: it holds the old key.
      const config = loadConfig({}, { dataDir: d });
      await assert.rejects(rotateMasterKeyFiles(config, join(d, 'new.key')), /stop it first/);
      await c.close(true);

      // A wrong "old" key (WARREN_MASTER_KEY_FILE pointing elsewhere): refused, nothing changes.
      const wrong = join(d, 'wrong.key');
      await writeFile(wrong, randomBytes(32), { mode: 0o600 });
      await assert.rejects(
        rotateMasterKeyFiles(loadConfig({}, { dataDir: d, masterKeyFile: wrong }), join(d, 'new.key')),
        /BACKUP_KEY_REJECTED|wrapped by master key/,
      );

      const result = await rotateMasterKeyFiles(config, join(d, 'new.key'));
      assert.deepEqual([result.backupKeys, result.secretKeys], [1, 1]);
      const newKey = await readFile(join(d, 'new.key'));
      assert.equal(newKey.length, 32);
      assert.ok(!newKey.equals(oldKey));

      // With the new key: the secret opens, the backup verifies, image keys are what they were.
      c = await openTestControlPlane({ ...SETTINGS, masterKeyFile: join(d, 'new.key') }, d);
      h.cpUrl = c.url;
      await h.heartbeat();
      const opened = await agentSecrets(h, ids.rho!, c);
      assert.equal(opened.status, 200, opened.text);
      assert.equal(Buffer.from(opened.body.secrets[0].value, 'base64').toString(), v);
      const ok = await call(c.url, 'POST', `/v1/tenants/rho/backups/${b.body.id}/verify`, {
        token: keys.rho,
      });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.body.ok, true, ok.text);
      assert.ok(imageKey(await imageSeed(c.cp.store.db, newKey), 'sha256:feed').equals(seedBefore));

      // With the old key: the control plane refuses to start (it would derive wrong image
      // keys), and neither the secret's nor the backup's wrapped key opens with it.
      const rows = {
        secret: await c.cp.store.db.selectFrom('tenant_secrets').selectAll().executeTakeFirstOrThrow(),
        backup: await c.cp.store.db.selectFrom('tenant_keys').selectAll().executeTakeFirstOrThrow(),
      };
      await c.close(true);
      await assert.rejects(
        openTestControlPlane(SETTINGS, d),
        /a master-key rotation moved them to another key/,
      );
      assert.throws(
        () =>
          openSecret(
            oldKey,
            { tenantId: ids.rho!, name: 'ROTATED', version: 1 },
            { wrappedKey: rows.secret.wrapped_key, sealed: rows.secret.sealed },
          ),
        /wrapped by master key/,
      );
      assert.throws(() => unwrapTenantKey(oldKey, ids.rho!, rows.backup.wrapped), /wrapped by master key/);
      // Nor does a row forced to claim the old key's fingerprint open with it.
      const forged = rows.secret.wrapped_key.replace(/^v1\.[0-9a-f]+\./, `v1.${keyFingerprint(oldKey)}.`);
      assert.throws(
        () =>
          openSecret(
            oldKey,
            { tenantId: ids.rho!, name: 'ROTATED', version: 1 },
            { wrappedKey: forged, sealed: rows.secret.sealed },
          ),
        /does not open/,
      );
    } finally {
      await h.stop();
      await c.close(true);
      await rm(d, { recursive: true, force: true });
    }
  });
});
