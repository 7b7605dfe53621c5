/**
 * The web console's sessions against a real control plane (docs/security.md, "the web
 * console"): what a session cookie opens and what it does not. Each test is an attack: the
 * cookie sent to /v1, console requests without the CSRF token or from another origin, sign-in
 * from another origin, an expired, signed-out or revoked session, a planted second cookie, the
 * dashboard domain reaching the console, and a look into the database files for the cookie.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  call,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';

describe('console sessions', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  let origin = '';
  const keys: Record<string, string> = {};

  before(async () => {
    t = await openTestControlPlane();
    origin = t.url;
    agent = await new FakeAgent('h1', { vcpus: 8, memoryMiB: 16384, diskMiB: 100_000 }).start(
      t.url,
      t.joinToken,
    );
    for (const name of ['alpha', 'beta']) keys[name] = (await createTenantWithKey(t, { name })).key.token;
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
  });

  const host = () => new URL(t.url).host;

  async function signIn(token: string, headers: Record<string, string> = { origin }) {
    const res = await fetch(`${t.url}/console/api/session`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ token }),
    });
    const body = (await res.json()) as { kind: string; tenantName: string | null; csrfToken: string };
    const cookie = /^warren_console=([^;]+)/.exec(res.headers.get('set-cookie') ?? '')?.[1];
    return { status: res.status, body, cookie, setCookie: res.headers.get('set-cookie') };
  }

  const api = (path: string, cookie: string, init: RequestInit & { headers?: Record<string, string> } = {}) =>
    fetch(`${t.url}${path}`, { ...init, headers: { cookie: `warren_console=${cookie}`, ...init.headers } });

  test('sign-in: an HttpOnly SameSite=Strict cookie for /console/, the CSRF token in the answer', async () => {
    const s = await signIn(t.adminToken);
    assert.equal(s.status, 201, JSON.stringify(s.body));
    assert.match(s.setCookie!, /HttpOnly/);
    assert.match(s.setCookie!, /SameSite=Strict/);
    assert.match(s.setCookie!, /Path=\/console\//);
    assert.doesNotMatch(s.setCookie!, /Domain=/i);
    assert.doesNotMatch(s.setCookie!, /Secure/, 'plain HTTP: no Secure');
    assert.equal(s.body.kind, 'admin');
    const behindTls = await signIn(t.adminToken, { origin, 'x-forwarded-proto': 'https' });
    assert.match(behindTls.setCookie!, /; Secure/);
    const ok = await api('/console/api/v1/tenants', s.cookie!, {
      headers: { 'x-warren-csrf': s.body.csrfToken },
    });
    assert.equal(ok.status, 200);
    assert.equal(((await ok.json()) as { tenants: unknown[] }).tenants.length, 2);
  });

  test('a host or join token, a bad token, or a sign-in from another origin is refused', async () => {
    assert.equal((await signIn('wrn_admin_nope')).status, 401);
    assert.equal((await signIn(t.joinToken)).status, 403);
    // Login CSRF: another site's page posting its own key to sign the visitor in.
    assert.equal((await signIn(keys.alpha!, { origin: 'http://evil.example' })).status, 403);
    assert.equal((await signIn(keys.alpha!, {})).status, 403, 'no Origin at all');
    assert.equal((await signIn(keys.alpha!, { origin, 'sec-fetch-site': 'same-site' })).status, 403);
  });

  test('the cookie opens nothing on /v1; a bearer token opens nothing on /console/api', async () => {
    const s = await signIn(t.adminToken);
    for (const path of ['/v1/tenants', '/v1/hosts']) {
      const res = await api(path, s.cookie!, { headers: { 'x-warren-csrf': s.body.csrfToken } });
      assert.equal(res.status, 401, path);
    }
    const stop = await api('/v1/tenants/alpha/stop', s.cookie!, {
      method: 'POST',
      headers: { 'x-warren-csrf': s.body.csrfToken, origin },
    });
    assert.equal(stop.status, 401);
    const bearer = await fetch(`${t.url}/console/api/v1/tenants`, {
      headers: { authorization: `Bearer ${t.adminToken}` },
    });
    assert.equal(bearer.status, 401);
  });

  test('CSRF: no token, a wrong token, another origin or a cross-site fetch is refused, and nothing happens', async () => {
    const s = await signIn(t.adminToken);
    const stop = (headers: Record<string, string>) =>
      api('/console/api/v1/tenants/alpha/stop', s.cookie!, { method: 'POST', headers });
    const refused: Record<string, string>[] = [
      {},
      { 'x-warren-csrf': 'guess' },
      { 'x-warren-csrf': s.body.csrfToken, origin: 'http://evil.example' },
      { 'x-warren-csrf': s.body.csrfToken, origin: `http://evil.${host()}` },
      { 'x-warren-csrf': s.body.csrfToken, 'sec-fetch-site': 'same-site' },
      { 'x-warren-csrf': s.body.csrfToken, 'sec-fetch-site': 'cross-site' },
    ];
    for (const headers of refused) {
      const res = await stop(headers);
      assert.equal(res.status, 403, JSON.stringify(headers));
    }
    // Another session's token does not fit this session.
    const other = await signIn(t.adminToken);
    assert.equal((await stop({ 'x-warren-csrf': other.body.csrfToken })).status, 403);
    const tenant = await call(t.url, 'GET', '/v1/tenants/alpha', { token: t.adminToken });
    assert.equal(tenant.body.desiredState, 'running');
    // Refusals name the session's actor in the audit log; made-up cookies are not recorded.
    await api('/console/api/v1/tenants/alpha/stop', 'x'.repeat(43), { method: 'POST' });
    const audit = await call(t.url, 'GET', '/v1/audit?action=tenant.stop', { token: t.adminToken });
    assert.ok(audit.body.events.length >= refused.length);
    for (const e of audit.body.events) {
      assert.equal(e.result, 'FORBIDDEN');
      assert.equal(e.actor, 'admin');
    }
    // The real console request works.
    const ok = await stop({ 'x-warren-csrf': s.body.csrfToken, origin, 'sec-fetch-site': 'same-origin' });
    assert.equal(ok.status, 202);
    const start = await api('/console/api/v1/tenants/alpha/start', s.cookie!, {
      method: 'POST',
      headers: { 'x-warren-csrf': s.body.csrfToken },
    });
    assert.equal(start.status, 202);
  });

  test('the terminal WebSocket needs its own Origin', async () => {
    const s = await signIn(t.adminToken);
    // fetch cannot send a handshake (undici refuses the Upgrade header): node:http can.
    const { request } = await import('node:http');
    const status = (headers: Record<string, string>) =>
      new Promise<number>((resolve, reject) => {
        const req = request(`${t.url}/console/api/v1/tenants/alpha/terminal`, {
          headers: {
            cookie: `warren_console=${s.cookie}`,
            connection: 'Upgrade',
            upgrade: 'websocket',
            'sec-websocket-version': '13',
            'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
            ...headers,
          },
        });
        req.on('response', (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        req.on('upgrade', (res, socket) => {
          socket.destroy();
          resolve(res.statusCode!);
        });
        req.on('error', reject);
        req.end();
      });
    assert.equal(await status({}), 403, 'no Origin');
    assert.equal(await status({ origin: 'http://evil.example' }), 403);
    // With its own origin it passes the checks; the fake agent has no terminal, so the host's
    // refusal is what comes back, not a 403.
    assert.notEqual(await status({ origin }), 403);
  });

  test('a tenant session has its key’s scope: another tenant is NOT_FOUND, admin routes FORBIDDEN', async () => {
    const s = await signIn(keys.alpha!);
    assert.equal(s.body.kind, 'tenant');
    assert.equal(s.body.tenantName, 'alpha');
    const h = { 'x-warren-csrf': s.body.csrfToken };
    assert.equal((await api('/console/api/v1/tenants/beta', s.cookie!, { headers: h })).status, 404);
    assert.equal(
      (await api('/console/api/v1/tenants/beta/stop', s.cookie!, { method: 'POST', headers: h })).status,
      404,
    );
    assert.equal((await api('/console/api/v1/hosts', s.cookie!, { headers: h })).status, 403);
    const list = (await (await api('/console/api/v1/tenants', s.cookie!, { headers: h })).json()) as {
      tenants: { name: string }[];
    };
    assert.deepEqual(
      list.tenants.map((x: { name: string }) => x.name),
      ['alpha'],
    );
  });

  test('sign-out, expiry and a revoked key end the session; two cookies are refused', async () => {
    const s = await signIn(t.adminToken);
    const h = { 'x-warren-csrf': s.body.csrfToken };
    const out = await api('/console/api/session', s.cookie!, { method: 'DELETE', headers: h });
    assert.equal(out.status, 204);
    assert.match(out.headers.get('set-cookie')!, /Max-Age=0/);
    assert.equal((await api('/console/api/v1/tenants', s.cookie!, { headers: h })).status, 401);

    const e = await signIn(t.adminToken);
    await t.cp.store.db
      .updateTable('console_sessions')
      .set({ expires_at: '2000-01-01T00:00:00.000Z' })
      .execute();
    assert.equal(
      (await api('/console/api/v1/tenants', e.cookie!, { headers: { 'x-warren-csrf': e.body.csrfToken } }))
        .status,
      401,
    );

    const key = await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: 'beta' } });
    const r = await signIn(key.body.token);
    const rh = { 'x-warren-csrf': r.body.csrfToken };
    assert.equal((await api('/console/api/v1/tenants/beta', r.cookie!, { headers: rh })).status, 200);
    assert.equal(
      (await call(t.url, 'DELETE', `/v1/keys/${key.body.key.id}`, { token: t.adminToken })).status,
      204,
    );
    assert.equal((await api('/console/api/v1/tenants/beta', r.cookie!, { headers: rh })).status, 401);

    const a = await signIn(t.adminToken);
    const b = await signIn(keys.alpha!);
    const both = await fetch(`${t.url}/console/api/v1/tenants`, {
      headers: {
        cookie: `warren_console=${b.cookie}; warren_console=${a.cookie}`,
        'x-warren-csrf': a.body.csrfToken,
      },
    });
    assert.equal(both.status, 400);
    assert.equal(((await both.json()) as { error: { code: string } }).error.code, 'DUPLICATE_SESSION_COOKIE');
  });

  test('the dashboard domain never reaches the console', async () => {
    const s = await signIn(t.adminToken);
    const port = new URL(t.url).port;
    for (const path of ['/console/', '/console/api/session', '/console/api/v1/tenants']) {
      const { request } = await import('node:http');
      const status = await new Promise<number>((resolve, reject) => {
        const req = request(`${t.url}${path}`, {
          headers: {
            host: `alpha.dashboard.localhost:${port}`,
            cookie: `warren_console=${s.cookie}`,
            'x-warren-csrf': s.body.csrfToken,
          },
        });
        req.on('response', (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        req.on('error', reject);
        req.end();
      });
      // Routed to the tenant's dashboard (not logged in there: 401), never to the console.
      assert.notEqual(status, 200, path);
    }
  });

  test('the console’s files: only the build, with its security headers; no path leaves it', async () => {
    const page = await fetch(`${t.url}/console/tenants/alpha`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<div id="root">/);
    assert.match(page.headers.get('content-security-policy')!, /frame-ancestors 'none'/);
    assert.equal(page.headers.get('x-frame-options'), 'DENY');
    for (const path of [
      '/console/..%2f..%2f..%2fpackage.json',
      '/console/%2e%2e/%2e%2e/%2e%2e/package.json',
      '/console/assets/..%2f..%2f..%2f..%2fpackage.json',
      '/console/%252e%252e%252f%252e%252e%252f%252e%252e%252fpackage.json',
    ]) {
      const res = await fetch(`${t.url}${path}`);
      const text = await res.text();
      assert.doesNotMatch(text, /"workspaces"|"private"/, path);
    }
    assert.equal((await fetch(`${t.url}/console/api/nothing`)).status, 404);
  });

  test('the database holds no session id, only its hash', async () => {
    const s = await signIn(t.adminToken);
    const dir = join(t.dataDir, 'control-plane');
    for (const f of await readdir(dir)) {
      const bytes = await readFile(join(dir, f)).catch(() => Buffer.alloc(0));
      assert.equal(bytes.includes(s.cookie!), false, f);
    }
  });
});
