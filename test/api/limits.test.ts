/**
 * Limits at the control plane (issue 9, finding 8): a per-credential request rate, per-tenant
 * caps on open exec streams and dashboard streams, and retention of the audit log and finished
 * operations. Each attack comes from one tenant's key; the other tenant must not notice it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  call,
  convergeAllRunning,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { until } from '../helpers/until.ts';

interface Setup {
  t: TestControlPlane;
  agent: FakeAgent;
  keys: Record<'a' | 'b', string>;
}

/** A control plane with one fake host and two running tenants, `a` and `b`, each with its own key. */
async function setup(overrides: Parameters<typeof openTestControlPlane>[0]): Promise<Setup> {
  const t = await openTestControlPlane(overrides);
  // Heartbeats on a timer: the host must stay healthy while a test holds streams open.
  const agent = await new FakeAgent('limits-host', { vcpus: 8, memoryMiB: 16384, diskMiB: 100_000 }).start(
    t.url,
    t.joinToken,
    1000,
  );
  const keys = {} as Record<'a' | 'b', string>;
  for (const name of ['a', 'b'] as const) {
    keys[name] = (await createTenantWithKey(t, { name })).key.token;
  }
  await convergeAllRunning(t, [agent]);
  return { t, agent, keys };
}

describe('per-credential rate limit', () => {
  let s: Setup;
  // A burst of 20, and a refill so slow (one request per 1000 s) that no test run sees one.
  before(async () => {
    s = await setup({ rateLimitBurst: 20, rateLimitPerSecond: 0.001 });
  });
  after(async () => {
    await s?.agent.stop();
    await s?.t.close();
  });

  test("a burst from one key gets 429 RATE_LIMITED with Retry-After; another tenant's key is unaffected", async () => {
    const burst = await Promise.all(
      Array.from({ length: 30 }, () => call(s.t.url, 'GET', '/v1/tenants/a', { token: s.keys.a })),
    );
    // The setup used none of this key's budget, so exactly the burst gets through.
    assert.equal(burst.filter((r) => r.status === 200).length, 20);
    const refused = burst.filter((r) => r.status === 429);
    assert.equal(refused.length, 10);
    for (const r of refused) assert.equal(r.body.error.code, 'RATE_LIMITED');
    const res = await fetch(`${s.t.url}/v1/tenants/a`, { headers: { authorization: `Bearer ${s.keys.a}` } });
    assert.equal(res.status, 429);
    assert.ok(Number(res.headers.get('retry-after')) >= 1, `Retry-After: ${res.headers.get('retry-after')}`);
    await res.body?.cancel();
    // The other tenant's key, and the admin token, have their own budgets.
    for (let i = 0; i < 5; i++) {
      assert.equal((await call(s.t.url, 'GET', '/v1/tenants/b', { token: s.keys.b })).status, 200);
    }
    assert.equal((await call(s.t.url, 'GET', '/v1/tenants', { token: s.t.adminToken })).status, 200);
  });

  test('refused requests are not written to the audit log (that work is what the limit bounds)', async () => {
    const stop = await call(s.t.url, 'POST', '/v1/tenants/a/stop', { token: s.keys.a, body: {} });
    assert.equal(stop.status, 429, stop.text);
    const audit = await call(s.t.url, 'GET', '/v1/audit?limit=1000', { token: s.t.adminToken });
    assert.ok(!audit.body.events.some((e: { result: string }) => e.result === 'RATE_LIMITED'));
  });
});

describe('per-tenant stream caps', () => {
  let s: Setup;
  let open: () => void = () => {};
  before(async () => {
    s = await setup({ tenantMaxExecs: 3, tenantMaxDashboardStreams: 2 });
  });
  after(async () => {
    open();
    await s?.agent.stop();
    await s?.t.close();
  });

  /** Starts a request and returns once its headers are in; the body stays unread (open). */
  async function start(path: string, key: string, body?: unknown): Promise<Response> {
    return fetch(`${s.t.url}${path}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers: {
        authorization: `Bearer ${key}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  }

  test('a tenant gets 3 concurrent execs; the 4th is refused with TOO_MANY_STREAMS; the other tenant is unaffected', async () => {
    s.agent.gate = new Promise<void>((r) => {
      open = r;
    });
    const exec = { argv: ['sleep', '1000'] };
    const held = await Promise.all([1, 2, 3].map(() => start('/v1/tenants/a/exec', s.keys.a, exec)));
    for (const r of held) assert.equal(r.status, 200);
    await until('the three execs to reach the host', () => s.agent.streaming === 3, 10_000, 10);
    const extra = await call(s.t.url, 'POST', '/v1/tenants/a/exec', { token: s.keys.a, body: exec });
    assert.equal(extra.status, 429, extra.text);
    assert.equal(extra.body.error.code, 'TOO_MANY_STREAMS');
    assert.match(extra.body.error.message, /WARREN_TENANT_MAX_EXECS/);
    // Tenant b's exec runs while a is at its cap.
    const other = await start('/v1/tenants/b/exec', s.keys.b, exec);
    assert.equal(other.status, 200);
    open();
    for (const r of [...held, other]) assert.match(await r.text(), /"exit"/);
    // Ended streams are counted out: a's next execs run again, and its cap is whole again.
    s.agent.gate = undefined;
    for (let i = 0; i < 4; i++) {
      const again = await call(s.t.url, 'POST', '/v1/tenants/a/exec', { token: s.keys.a, body: exec });
      assert.equal(again.status, 200, again.text);
    }
  });

  test('execs whose clients go away mid-stream are counted out', async () => {
    s.agent.gate = new Promise<void>((r) => {
      open = r;
    });
    const exec = { argv: ['sleep', '1000'] };
    const aborts = [1, 2, 3].map(() => new AbortController());
    const gone = await Promise.all(
      aborts.map((a) =>
        fetch(`${s.t.url}/v1/tenants/a/exec`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.keys.a}`, 'content-type': 'application/json' },
          body: JSON.stringify(exec),
          signal: a.signal,
        }),
      ),
    );
    for (const r of gone) assert.equal(r.status, 200);
    for (const a of aborts) a.abort();
    // Until the control plane has seen the clients go, a new exec is refused; then exactly
    // three fit again.
    const held: Response[] = [];
    await until(
      'the aborted execs to be counted out',
      async () => {
        const r = await start('/v1/tenants/a/exec', s.keys.a, exec);
        if (r.status === 200) held.push(r);
        else await r.body?.cancel();
        return held.length === 3;
      },
      10_000,
      20,
    );
    const extra = await call(s.t.url, 'POST', '/v1/tenants/a/exec', { token: s.keys.a, body: exec });
    assert.equal(extra.status, 429, extra.text);
    open();
    for (const r of held) assert.match(await r.text(), /"exit"/);
    s.agent.gate = undefined;
  });

  test('dashboard streams: 2 at once per tenant, the 3rd refused; the other tenant is unaffected', async () => {
    s.agent.gate = new Promise<void>((r) => {
      open = r;
    });
    const held = await Promise.all([1, 2].map(() => start('/t/a/dashboard/events', s.keys.a)));
    for (const r of held) assert.equal(r.status, 200);
    const extra = await call(s.t.url, 'GET', '/t/a/dashboard/other', { token: s.keys.a });
    assert.equal(extra.status, 429, extra.text);
    assert.equal(extra.body.error.code, 'TOO_MANY_STREAMS');
    const other = await start('/t/b/dashboard/', s.keys.b);
    assert.equal(other.status, 200);
    open();
    for (const r of [...held, other]) assert.equal(await r.text(), 'dashboard page\n');
    s.agent.gate = undefined;
    const again = await call(s.t.url, 'GET', '/t/a/dashboard/', { token: s.keys.a });
    assert.equal(again.status, 200, again.text);
  });
});

/** A WebSocket handshake on a raw socket; resolves with the status code and the open socket. */
function wsHandshake(url: string, path: string, token: string): Promise<{ status: number; socket: Socket }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let got = '';
    socket.on('error', reject);
    socket.on('data', function onData(d: Buffer) {
      got += d.toString('latin1');
      if (!got.includes('\r\n\r\n')) return;
      socket.off('data', onData);
      resolve({ status: Number(got.split(' ')[1]), socket });
    });
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nAuthorization: Bearer ${token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n\r\n`,
    );
  });
}

describe('per-tenant WebSocket tunnels', () => {
  let s: Setup;
  const sockets: Socket[] = [];
  before(async () => {
    s = await setup({ tenantMaxDashboardStreams: 2 });
  });
  after(async () => {
    for (const socket of sockets) socket.destroy();
    await s?.t.close();
    await s?.agent.stop();
  });

  test('two open tunnels are the cap: a third handshake is refused, a closed tunnel frees its place', async () => {
    for (let i = 0; i < 2; i++) {
      const ws = await wsHandshake(s.t.url, '/t/a/dashboard/ws', s.keys.a);
      sockets.push(ws.socket);
      assert.equal(ws.status, 101);
    }
    const third = await wsHandshake(s.t.url, '/t/a/dashboard/ws', s.keys.a);
    sockets.push(third.socket);
    assert.equal(third.status, 429);
    // Plain requests count against the same cap.
    const page = await call(s.t.url, 'GET', '/t/a/dashboard/', { token: s.keys.a });
    assert.equal(page.status, 429, page.text);
    assert.equal(page.body.error.code, 'TOO_MANY_STREAMS');
    const other = await wsHandshake(s.t.url, '/t/b/dashboard/ws', s.keys.b);
    sockets.push(other.socket);
    assert.equal(other.status, 101);
    sockets[0]!.destroy();
    await until(
      "the closed tunnel's place to be free",
      async () => {
        const ws = await wsHandshake(s.t.url, '/t/a/dashboard/ws', s.keys.a);
        sockets.push(ws.socket);
        return ws.status === 101;
      },
      10_000,
      20,
    );
  });
});

describe('retention', () => {
  let s: Setup;
  before(async () => {
    s = await setup({ auditRetentionDays: 30, operationRetentionDays: 2 });
  });
  after(async () => {
    await s?.agent.stop();
    await s?.t.close();
  });

  test('audit events and finished operations past their retention are pruned; recent ones and running operations stay', async () => {
    const db = s.t.cp.store.db;
    const daysAgo = (d: number) => new Date(Date.now() - d * 24 * 3600_000).toISOString();
    const event = (id: string, at: string) => ({
      at,
      actor: 'admin',
      action: 'test.retention',
      target: id,
      tenant_id: null,
      result: 'ok',
      status: 200,
      request_id: id,
    });
    await db
      .insertInto('audit_events')
      .values([event('old-1', daysAgo(31)), event('old-2', daysAgo(400)), event('recent', daysAgo(29))])
      .execute();
    const op = (id: string, status: string, updatedDaysAgo: number) => ({
      id,
      kind: 'start',
      tenant_id: 'ten_0000000000000000',
      tenant_name: 'gone',
      generation: 1,
      status,
      error_code: null,
      error_message: null,
      created_at: daysAgo(updatedDaysAgo + 1),
      updated_at: daysAgo(updatedDaysAgo),
    });
    await db
      .insertInto('operations')
      .values([
        op('op_00000000000000a1', 'succeeded', 3),
        op('op_00000000000000a2', 'failed', 10),
        op('op_00000000000000a3', 'succeeded', 1),
        // Still running after days (a host that never came back): not history yet.
        op('op_00000000000000a4', 'running', 10),
      ])
      .execute();
    // The control plane's own sweeper prunes; nothing in the test calls it.
    await until(
      'the sweeper to prune the old rows',
      async () =>
        (await db.selectFrom('audit_events').select('id').where('target', 'like', 'old-%').execute())
          .length === 0 &&
        (
          await db
            .selectFrom('operations')
            .select('id')
            .where('id', 'in', ['op_00000000000000a1', 'op_00000000000000a2'])
            .execute()
        ).length === 0,
      30_000,
    );
    const audit = await db
      .selectFrom('audit_events')
      .select('target')
      .where('action', '=', 'test.retention')
      .execute();
    assert.deepEqual(
      audit.map((r) => r.target),
      ['recent'],
    );
    const ops = await db
      .selectFrom('operations')
      .select('id')
      .where('tenant_name', '=', 'gone')
      .orderBy('id')
      .execute();
    assert.deepEqual(
      ops.map((r) => r.id),
      ['op_00000000000000a3', 'op_00000000000000a4'],
    );
    // The tenants' own recent history is untouched.
    const listed = await call(s.t.url, 'GET', '/v1/audit?action=tenant.create', { token: s.t.adminToken });
    assert.equal(listed.body.events.length, 2);
  });
});
