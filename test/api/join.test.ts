/**
 * Joining (issue 9, finding 4): the join token lets a new host join, but not take over an
 * existing one. Re-joining under a name that exists needs that host's own token or a re-join
 * token an admin made for it; join tokens can be single-use, rotated and revoked.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { call, FakeAgent, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';

let t: TestControlPlane;
let victim: FakeAgent;
/** A host nobody re-joins: its token stays valid throughout. */
let steady: FakeAgent;

const CAPACITY = { vcpus: 4, memoryMiB: 8192, diskMiB: 100_000 };
const ATTACKER = 'http://127.0.0.1:9';

function join(token: string, name: string, extra: Record<string, unknown> = {}) {
  return call(t.url, 'POST', '/v1/agent/join', {
    token,
    body: {
      name,
      address: ATTACKER,
      agentToken: randomBytes(32).toString('base64url'),
      agentVersion: 'attacker',
      capacity: CAPACITY,
      ...extra,
    },
  });
}

async function hostRow(name: string) {
  return t.cp.store.db.selectFrom('hosts').selectAll().where('name', '=', name).executeTakeFirstOrThrow();
}

async function heartbeat(token: string) {
  return call(t.url, 'POST', '/v1/agent/heartbeat', {
    token,
    body: { agentVersion: 'x', capacity: CAPACITY, health: 'ok', images: [], vms: [] },
  });
}

before(async () => {
  t = await openTestControlPlane();
  victim = await new FakeAgent('victim-host', CAPACITY).start(t.url, t.joinToken);
  steady = await new FakeAgent('steady-host', CAPACITY).start(t.url, t.joinToken);
});

after(async () => {
  await victim?.stop();
  await steady?.stop();
  await t?.close();
});

describe('re-joining an existing host', () => {
  test('the join token alone cannot re-join under an existing host name: 409 HOST_EXISTS, nothing changes', async () => {
    const before = await hostRow('victim-host');
    const res = await join(t.joinToken, 'victim-host');
    assert.equal(res.status, 409, res.text);
    assert.equal(res.body.error.code, 'HOST_EXISTS');
    assert.match(res.body.error.message, /warren host rejoin victim-host/);
    // A host token that is not this host's is no proof either.
    const other = await new FakeAgent('other-host', CAPACITY).start(t.url, t.joinToken);
    await other.stop();
    const forged = await join(t.joinToken, 'victim-host', { hostToken: other.token });
    assert.equal(forged.status, 409, forged.text);
    const after = await hostRow('victim-host');
    assert.equal(after.address, before.address);
    assert.equal(after.agent_token, before.agent_token);
    assert.notEqual(after.address, ATTACKER);
    // The victim's own host token still works.
    assert.equal((await heartbeat(victim.token)).status, 200);
    const audit = await call(t.url, 'GET', '/v1/audit?action=host.join', { token: t.adminToken });
    assert.ok(audit.body.events.some((e: { result: string }) => e.result === 'HOST_EXISTS'));
  });

  test("the host's own token lets it re-join: same host id, address and token rotated", async () => {
    const own = await join(t.joinToken, 'victim-host', { hostToken: victim.token });
    assert.equal(own.status, 200, own.text);
    assert.equal(own.body.hostId, victim.hostId);
    assert.equal((await hostRow('victim-host')).address, ATTACKER);
    assert.equal((await heartbeat(victim.token)).status, 401, 'the old host token is rotated away');
    assert.equal((await heartbeat(own.body.token)).status, 200);
  });

  test('an admin re-join token re-joins that one host, once, and no other name', async () => {
    const made = await call(t.url, 'POST', '/v1/hosts/victim-host/rejoin', { token: t.adminToken });
    assert.equal(made.status, 201, made.text);
    assert.equal(made.body.joinToken.hostId, victim.hostId);
    assert.equal(made.body.joinToken.singleUse, true);
    assert.ok(made.body.joinToken.expiresAt);
    const elsewhere = await join(made.body.token, 'brand-new-host');
    assert.equal(elsewhere.status, 403, elsewhere.text);
    assert.equal(elsewhere.body.error.code, 'FORBIDDEN');
    const ok = await join(made.body.token, 'victim-host');
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.body.hostId, victim.hostId);
    const again = await join(made.body.token, 'victim-host');
    assert.equal(again.status, 401, again.text);
    // An expired re-join token is refused like a revoked one.
    const late = await call(t.url, 'POST', '/v1/hosts/victim-host/rejoin', { token: t.adminToken });
    await t.cp.store.db
      .updateTable('api_keys')
      .set({ expires_at: new Date(Date.now() - 1000).toISOString() })
      .where('id', '=', late.body.joinToken.id)
      .execute();
    assert.equal((await join(late.body.token, 'victim-host')).status, 401);
    const audit = await call(t.url, 'GET', '/v1/audit?action=host.rejoin', { token: t.adminToken });
    assert.equal(audit.body.events.length, 2);
    assert.equal(audit.body.events[0].actor, 'admin');
  });

  test("a host's token cannot make a re-join token, for another host or itself", async () => {
    for (const name of ['victim-host', 'steady-host']) {
      const res = await call(t.url, 'POST', `/v1/hosts/${name}/rejoin`, { token: steady.token });
      assert.equal(res.status, 403, res.text);
    }
  });
});

describe('join tokens', () => {
  test('a single-use join token joins one host only, also when two joins race for it', async () => {
    const made = await call(t.url, 'POST', '/v1/join-tokens', {
      token: t.adminToken,
      body: { singleUse: true },
    });
    assert.equal(made.status, 201, made.text);
    assert.match(made.body.joinToken.prefix, /^wrn_join_[A-Za-z0-9_-]{6}$/);
    const [a, b] = await Promise.all([join(made.body.token, 'once-a'), join(made.body.token, 'once-b')]);
    assert.deepEqual([a.status, b.status].sort(), [200, 401], `${a.text} ${b.text}`);
    assert.equal((await join(made.body.token, 'once-c')).status, 401);
    const list = await call(t.url, 'GET', '/v1/join-tokens', { token: t.adminToken });
    assert.ok(!list.body.joinTokens.some((k: { id: string }) => k.id === made.body.joinToken.id));
  });

  test('rotation: a new join token works, the revoked old one is refused, joined hosts keep working', async () => {
    const fresh = await call(t.url, 'POST', '/v1/join-tokens', {
      token: t.adminToken,
      body: { name: 'rotated' },
    });
    assert.equal(fresh.status, 201, fresh.text);
    const list = await call(t.url, 'GET', '/v1/join-tokens', { token: t.adminToken });
    const fromFile = list.body.joinTokens.find((k: { bootstrap: boolean }) => k.bootstrap);
    assert.ok(fromFile, list.text);
    assert.ok(t.joinToken.startsWith(fromFile.prefix));
    const revoked = await call(t.url, 'DELETE', `/v1/join-tokens/${fromFile.id}`, { token: t.adminToken });
    assert.equal(revoked.status, 204);
    const refused = await join(t.joinToken, 'after-rotation');
    assert.equal(refused.status, 401, refused.text);
    assert.equal(refused.body.error.code, 'UNAUTHENTICATED');
    assert.equal((await join(fresh.body.token, 'after-rotation')).status, 200);
    // Reusable: a second host joins with it too.
    assert.equal((await join(fresh.body.token, 'after-rotation-2')).status, 200);
    // Hosts that joined with the old token heartbeat with their own host tokens.
    assert.equal((await steady.heartbeat()).tenants.length, 0);
    assert.equal(
      (await call(t.url, 'DELETE', `/v1/join-tokens/${fromFile.id}`, { token: t.adminToken })).status,
      404,
    );
  });

  test('a restart writes a new join-token file for a revoked one; tokens made by the API survive it', async () => {
    const made = await call(t.url, 'POST', '/v1/join-tokens', { token: t.adminToken, body: {} });
    const dataDir = t.dataDir;
    await t.close(true);
    t = await openTestControlPlane({}, dataDir);
    assert.equal((await join(t.joinToken, 'from-new-file')).status, 200);
    assert.equal((await join(made.body.token, 'from-api-token')).status, 200);
  });
});
