/**
 * The authorization matrix, over every route the server registers (new routes are covered
 * without editing this file): no token → 401; tenant A's key → 404 on each of tenant B's
 * resources, by name and by id, and 403 on admin and agent routes; a revoked key → 401 on
 * the very next request. A's key on A's own resources succeeds, so the 404s are not an outage.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RegisteredRoute } from '@warren/control-plane';
import {
  call,
  convergeAllRunning,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { until } from '../helpers/until.ts';

let t: TestControlPlane;
let agent: FakeAgent;
const tenants: Record<
  'a' | 'b',
  { id: string; name: string; key: string; keyId: string; op: string; session: string; backup: string }
> = {} as never;
/** A snapshot each tenant has from the start, for the routes that name one. */
const SNAPSHOT = 'base';

function concrete(route: RegisteredRoute, who: 'a' | 'b', byId = false): string {
  const x = tenants[who];
  const path = route.url
    .replace(':tenant', byId ? x.id : x.name)
    .replace(':operation', x.op)
    .replace(':host', agent.name)
    .replace(':key', x.keyId)
    .replace(':snapshot', SNAPSHOT)
    .replace(':session', x.session)
    .replace(':backup', x.backup)
    .replace(':name', 'AUTHZ_SECRET');
  return route.url.includes('/files') ? `${path}?path=/tmp/x` : path;
}

function sampleBody(route: RegisteredRoute): { body?: unknown; raw?: string; contentType?: string } {
  if (route.streamBody) return { raw: 'hello', contentType: 'application/octet-stream' };
  if (route.url.endsWith('/exec')) return { body: { argv: ['true'] } };
  if (route.url === '/v1/keys') return { body: { tenant: tenants.b.name } };
  if (route.url.endsWith('/drain')) return { body: { draining: false } };
  if (route.url.includes('/secrets/')) return { body: { value: 'authz-value' } };
  if (route.method === 'POST' || route.method === 'PUT') return { body: {} };
  return {};
}

before(async () => {
  t = await openTestControlPlane({ backupPollMs: 20 });
  agent = (
    await new FakeAgent('host-1', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 }).start(
      t.url,
      t.joinToken,
    )
  ).useObjectStore(join(t.dataDir, 'objects'));
  for (const who of ['a', 'b'] as const) {
    const name = `tenant-${who}`;
    const { created, key } = await createTenantWithKey(t, { name });
    tenants[who] = {
      id: created.tenant.id,
      name,
      key: key.token,
      keyId: key.key.id,
      op: created.operation.id,
      // The success walk below starts a session (POST) before it reaches the routes that name one.
      session: 'ses_0000000000000000',
      backup: '',
    };
  }
  await convergeAllRunning(t, [agent]);
  for (const who of ['a', 'b'] as const) {
    const snap = await call(t.url, 'POST', `/v1/tenants/${tenants[who].name}/snapshots`, {
      token: t.adminToken,
      body: { name: SNAPSHOT },
    });
    assert.equal(snap.status, 201, snap.text);
    tenants[who].backup = await completeBackup(who);
  }
});

/** A complete backup of the tenant, for the routes that name one. */
async function completeBackup(who: 'a' | 'b'): Promise<string> {
  const b = await call(t.url, 'POST', `/v1/tenants/${tenants[who].name}/backups`, {
    token: t.adminToken,
    body: {},
  });
  assert.equal(b.status, 202, b.text);
  await until('the backup completes', async () => {
    const r = await call(t.url, 'GET', `/v1/tenants/${tenants[who].name}/backups/${b.body.id}`, {
      token: t.adminToken,
    });
    return r.body.state === 'complete';
  });
  return b.body.id;
}

after(async () => {
  await agent?.stop();
  await t?.close();
});

describe('authorization matrix', () => {
  test('every route declares who may call it', () => {
    assert.ok(t.cp.routes.length >= 18, `only ${t.cp.routes.length} routes registered`);
    for (const r of t.cp.routes)
      assert.ok(['public', 'admin', 'tenant', 'host', 'join'].includes(r.auth), r.url);
    const pub = t.cp.routes.filter((r) => r.auth === 'public').map((r) => r.url);
    assert.deepEqual(pub.sort(), ['/v1/health', '/v1/openapi.json']);
  });

  test('no token, a malformed token and an unknown token get 401 on every non-public route', async () => {
    for (const r of t.cp.routes.filter((x) => x.auth !== 'public')) {
      for (const token of [undefined, 'garbage', `wrn_key_${'A'.repeat(43)}`]) {
        const res = await call(t.url, r.method, concrete(r, 'b'), {
          ...sampleBody(r),
          ...(token ? { token } : {}),
        });
        assert.equal(res.status, 401, `${r.method} ${r.url} with ${token ?? 'no token'}: ${res.text}`);
        assert.equal(res.body.error.code, 'UNAUTHENTICATED');
      }
    }
    // Without a valid token nothing is written, not even to the audit log.
    const audit = await call(t.url, 'GET', '/v1/audit?limit=1000', { token: t.adminToken });
    assert.ok(!audit.body.events.some((e: { actor: string }) => e.actor === 'anonymous'));
  });

  test("tenant A's key: 403 on admin and agent routes, 404 on each of B's resources by name and id", async () => {
    let checked = 0;
    for (const r of t.cp.routes.filter((x) => x.auth !== 'public')) {
      for (const byId of [false, true]) {
        const res = await call(t.url, r.method, concrete(r, 'b', byId), {
          token: tenants.a.key,
          ...sampleBody(r),
        });
        const names = r.url.includes(':tenant') || r.url.includes(':operation');
        if (r.auth !== 'tenant') {
          assert.equal(res.status, 403, `${r.method} ${r.url}: ${res.text}`);
          assert.equal(res.body.error.code, 'FORBIDDEN');
        } else if (names) {
          assert.equal(res.status, 404, `${r.method} ${r.url}: ${res.text}`);
          assert.equal(res.body.error.code, 'NOT_FOUND');
          // The same answer as for a tenant that does not exist: nothing to learn.
          const ghost = byId ? 'ten_0000000000000000' : 'no-such-tenant';
          const ref = byId ? tenants.b.id : tenants.b.name;
          const missing = await call(t.url, r.method, concrete(r, 'b', byId).replace(ref, ghost), {
            token: tenants.a.key,
            ...sampleBody(r),
          });
          if (r.url.includes(':tenant')) {
            assert.equal(res.body.error.message, missing.body.error.message.replace(ghost, ref));
          }
        } else {
          assert.ok(res.status < 300, `${r.method} ${r.url}: ${res.text}`);
        }
        checked++;
      }
    }
    assert.ok(checked >= 30);
  });

  test("tenant A's key succeeds on its own resources through the same routes", async () => {
    for (const r of t.cp.routes.filter((x) => x.auth === 'tenant' && x.url.includes(':'))) {
      if (r.url.endsWith('/stop') || r.url.endsWith('/start')) continue;
      // A WebSocket only (400 to a plain GET): its success is test/vm/console-terminal.test.ts's.
      if (r.url.endsWith('/terminal')) continue;
      // Deleting the backup the later routes name would leave them nothing: delete another.
      const path =
        r.method === 'DELETE' && r.url.endsWith('/:backup')
          ? concrete(r, 'a').replace(tenants.a.backup, await completeBackup('a'))
          : concrete(r, 'a');
      const res = await call(t.url, r.method, path, { token: tenants.a.key, ...sampleBody(r) });
      assert.ok(res.status >= 200 && res.status < 300, `${r.method} ${r.url}: ${res.status} ${res.text}`);
      // A backup or restore holds the tenant until its job ends; the next routes need it free.
      if (r.method === 'POST' && r.url.endsWith('/backups'))
        await until('the backup ends', async () => {
          const b = await call(t.url, 'GET', `/v1/tenants/tenant-a/backups/${res.body.id}`, {
            token: tenants.a.key,
          });
          return b.body.state !== 'running';
        });
      if (r.url.endsWith('/restore'))
        await until('the restore ends', async () => {
          const o = await call(t.url, 'GET', `/v1/operations/${res.body.operation.id}`, {
            token: tenants.a.key,
          });
          return o.body.status !== 'running';
        });
      if (r.method === 'POST' && r.url.endsWith('/sessions')) tenants.a.session = res.body.id;
    }
  });

  test('lists and the audit log show tenant A only its own', async () => {
    const list = await call(t.url, 'GET', '/v1/tenants', { token: tenants.a.key });
    assert.deepEqual(
      list.body.tenants.map((x: { name: string }) => x.name),
      ['tenant-a'],
    );
    const filtered = await call(t.url, 'GET', `/v1/tenants?host=${agent.name}`, { token: tenants.a.key });
    assert.deepEqual(
      filtered.body.tenants.map((x: { name: string }) => x.name),
      ['tenant-a'],
    );
    const audit = await call(t.url, 'GET', '/v1/audit', { token: tenants.a.key });
    assert.ok(audit.body.events.length > 0);
    for (const e of audit.body.events) assert.equal(e.tenantId, tenants.a.id);
    const probe = await call(t.url, 'GET', `/v1/audit?tenant=${tenants.b.id}`, { token: tenants.a.key });
    assert.deepEqual(probe.body.events, []);
  });

  test('host and join tokens cannot use tenant or admin routes, tenant keys cannot heartbeat', async () => {
    for (const token of [agent.token, t.joinToken]) {
      for (const [m, p] of [
        ['GET', '/v1/tenants'],
        ['GET', '/v1/hosts'],
        ['POST', '/v1/keys'],
      ] as const) {
        const res = await call(t.url, m, p, { token, body: {} });
        assert.equal(res.status, 403, `${m} ${p}: ${res.text}`);
      }
    }
    const hb = await call(t.url, 'POST', '/v1/agent/heartbeat', { token: tenants.a.key, body: {} });
    assert.equal(hb.status, 403);
  });

  test('a revoked key is refused on the next request', async () => {
    const fresh = await call(t.url, 'POST', '/v1/keys', {
      token: t.adminToken,
      body: { tenant: 'tenant-a' },
    });
    const token = fresh.body.token;
    assert.equal((await call(t.url, 'GET', '/v1/tenants/tenant-a', { token })).status, 200);
    const revoked = await call(t.url, 'DELETE', `/v1/keys/${fresh.body.key.id}`, { token: t.adminToken });
    assert.equal(revoked.status, 204);
    const after = await call(t.url, 'GET', '/v1/tenants/tenant-a', { token });
    assert.equal(after.status, 401);
    // The key list never shows tokens, only prefixes: the kind prefix and 6 characters. (This
    // used to compare with the token's last 20 characters, and failed whenever tenant A's
    // random token had a `_` near its end, which the old prefix cut at; issue 9.)
    const keys = await call(t.url, 'GET', '/v1/keys', { token: t.adminToken });
    for (const k of keys.body.keys) assert.match(k.prefix, /^wrn_key_[A-Za-z0-9_-]{6}$/);
    assert.ok(!keys.text.includes(tenants.a.key.slice('wrn_key_'.length + 6)));
  });

  test('an admin PATCH of the network policy reaches the host in its desired state; bad CIDRs are refused', async () => {
    const bad = await call(t.url, 'PATCH', '/v1/tenants/tenant-a', {
      token: t.adminToken,
      body: { network: { egress: 'allowlist', allowlist: [{ cidr: '10.0.0.0/33' }] } },
    });
    assert.equal(bad.status, 400);
    const res = await call(t.url, 'PATCH', '/v1/tenants/tenant-a', {
      token: t.adminToken,
      body: {
        network: { egress: 'allowlist', allowlist: [{ cidr: '203.0.113.0/24', ports: [443] }] },
        dashboardPort: 18789,
      },
    });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.network.egress, 'allowlist');
    await agent.heartbeat();
    const desired = agent.desired.find((d) => d.name === 'tenant-a')!;
    assert.deepEqual(desired.network, {
      egress: 'allowlist',
      allowlist: [{ cidr: '203.0.113.0/24', ports: [443] }],
      bandwidthMbit: null,
    });
    assert.equal(desired.dashboardPort, 18789);
  });

  test('the control plane authenticates to the agent with the token the agent chose', async () => {
    const calls = agent.seen.filter((s) => s.url.includes('/exec'));
    assert.ok(calls.length > 0);
    for (const c of calls) assert.match(c.auth ?? '', /^Bearer /);
    assert.ok(!agent.seen.some((s) => s.auth?.includes(t.adminToken)), 'admin token leaked to a host');
  });
});
