/**
 * Issue 9, acceptance 4: in a real browser, tenant A's dashboard cannot read tenant B's or call
 * the platform's API with its visitor's credentials, even after planting cookies, over HTTP and
 * WebSocket. Headless Chromium (the Debian package, driven by playwright-core; never a browser
 * download) visits a real control plane in this process, whose dashboards go through the host
 * agent's real remote API to hostile pages served on loopback: tenant A's "VM" (127.0.0.2) is
 * the attacker, tenant B's (127.0.0.4) holds a secret. The visitor is logged in to both, as an
 * operator with several tenants would be. Each origin is `<tenant>.dashboard.localhost:<port>`,
 * which the browser resolves to loopback by itself.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BrowserContext, Page } from 'playwright-core';
import { call, createTenantWithKey, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { CHROMIUM_MISSING, launchChromiumProfile } from '../helpers/browser.ts';
import { ProxyAgent } from '../helpers/proxy-agent.ts';
import { until } from '../helpers/until.ts';
import { acceptWebSocketEcho } from '../helpers/ws-echo.ts';

/*
 * The page's globals, for the functions that run in the browser (page.evaluate): the project
 * compiles without the DOM library, so only what those functions use is declared.
 */
interface PageElement {
  src: string;
  onload: (() => void) | null;
  onerror: (() => void) | null;
  contentDocument?: { body?: { textContent: string } } | null;
}
declare const document: {
  cookie: string;
  createElement(tag: string): PageElement;
  head: { append(e: PageElement): void };
  body: { append(e: PageElement): void };
};
declare const window: { leaked?: string };
declare const location: { origin: string };

const SECRET = `b-secret-${Date.now().toString(36)}`;
const PLANTED = 'planted-by-a';

/** What each tenant's "VM" was asked, for the assertions: every request's path and headers. */
const log: Record<'a' | 'b', { url: string; headers: IncomingMessage['headers']; upgrade: boolean }[]> = {
  a: [],
  b: [],
};

/**
 * Tenant A's dashboard, hostile: its answers try everything a response can do to a browser
 * (cookies for the whole dashboard domain, for B's paths, nameless and platform-named ones,
 * Clear-Site-Data that would wipe every session of the site, HSTS). Tenant B's is an ordinary
 * app with a secret. Both echo WebSocket frames.
 */
function vm(who: 'a' | 'b'): Server {
  const server = createServer((req, res) => {
    log[who].push({ url: req.url!, headers: req.headers, upgrade: false });
    if (who === 'a' && req.url === '/plant') {
      res.setHeader('set-cookie', [
        `tossed=${PLANTED}; Domain=dashboard.localhost; Path=/`,
        `outer=${PLANTED}; Path=/t/tenant-b/dashboard/; Domain=dashboard.localhost`,
        `=warren_session=${PLANTED}`,
        `warren_session=${PLANTED}; Domain=dashboard.localhost; Path=/`,
        `__Host-warren_session=${PLANTED}; Path=/; Secure`,
        `__Secure-warren_session=${PLANTED}; Domain=dashboard.localhost; Path=/; Secure`,
      ]);
      res.setHeader('clear-site-data', '"cookies", "storage", "cache"');
      res.setHeader('strict-transport-security', 'max-age=31536000; includeSubDomains');
      res.end('planted');
      return;
    }
    const body =
      who === 'a'
        ? '<!doctype html><title>tenant A</title><p id="who">tenant-a</p>'
        : `<!doctype html><title>tenant B</title><p id="who">tenant-b</p><p id="secret">${SECRET}</p>`;
    if (req.url === '/secret' || req.url === '/secret.js') {
      res.writeHead(200, { 'content-type': 'application/javascript' }).end(`var leaked = "${SECRET}";`);
      return;
    }
    if (req.url!.startsWith('/v1/')) {
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ vm: who, url: req.url }));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html' }).end(body);
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    log[who].push({ url: req.url!, headers: req.headers, upgrade: true });
    acceptWebSocketEcho(req, socket, head);
  });
  return server;
}

function listen(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

describe('tenant dashboards in a real browser', {
  skip: CHROMIUM_MISSING,
}, () => {
  let t: TestControlPlane;
  let agent: ProxyAgent;
  let context: BrowserContext;
  let profile = '';
  let port = '';
  const servers: Server[] = [];
  const keys: Record<string, string> = {};
  const origin = (tenant: string) => `http://${tenant}.dashboard.localhost:${port}`;

  before(async () => {
    // One port on two loopback addresses: the two tenants' "VMs".
    const a = vm('a');
    const vmPort = await listen(a, '127.0.0.2', 0);
    const b = vm('b');
    await listen(b, '127.0.0.4', vmPort);
    servers.push(a, b);
    // WARREN_DASHBOARD_DOMAIN is dashboard.localhost by default.
    t = await openTestControlPlane();
    port = new URL(t.url).port;
    agent = await new ProxyAgent().start(t.url, t.joinToken);
    agent.guestIps.set('tenant-a', '127.0.0.2');
    agent.guestIps.set('tenant-b', '127.0.0.4');
    for (const name of ['tenant-a', 'tenant-b']) {
      keys[name] = (await createTenantWithKey(t, { name, dashboardPort: vmPort })).key.token;
    }
    await until(
      'both tenants to run',
      async () => {
        await agent.heartbeat();
        const list = await call(t.url, 'GET', '/v1/tenants', { token: t.adminToken });
        return list.body.tenants.every((x: { state: string }) => x.state === 'running');
      },
      10_000,
    );
    profile = await mkdtemp(join(tmpdir(), 'warren-chromium-'));
    context = await launchChromiumProfile(profile);
  });

  after(async () => {
    await context?.close();
    await agent?.stop();
    await t?.close();
    for (const s of servers) {
      s.closeAllConnections();
      s.close();
    }
    if (profile) await rm(profile, { recursive: true, force: true });
  });

  /** Logs the browser in to a tenant's origin through its one-time link; returns the page on `/`. */
  async function login(page: Page, tenant: string): Promise<void> {
    const link = await call(t.url, 'POST', '/v1/sessions', { token: keys[tenant]!, body: {} });
    assert.equal(link.status, 201, link.text);
    await page.goto(link.body.loginUrl);
    await page.waitForURL(`${origin(tenant)}/`);
    assert.equal(await page.locator('#who').textContent(), tenant);
  }

  const sessionCookies = async () =>
    (await context.cookies()).filter((c) => c.name === '__Host-warren_session').map((c) => ({ ...c }));

  test('A cannot read B or call /v1 with the visitor’s credentials, even after planting cookies (HTTP and WebSocket)', async () => {
    const page = await context.newPage();
    await login(page, 'tenant-b');
    await login(page, 'tenant-a');
    // The visitor holds one session per origin: host-only, HttpOnly, Secure, SameSite=Strict.
    const sessions = await sessionCookies();
    assert.deepEqual(sessions.map((c) => c.domain).sort(), [
      'tenant-a.dashboard.localhost',
      'tenant-b.dashboard.localhost',
    ]);
    for (const c of sessions) {
      assert.equal(c.httpOnly, true);
      assert.equal(c.secure, true);
      assert.equal(c.sameSite, 'Strict');
      assert.equal(c.path, '/');
    }
    const bBefore = log.b.length;

    // Everything below runs as tenant A's own script, on A's origin.
    const found = await page.evaluate(
      async ({ b, api, planted }) => {
        const out: Record<string, string> = {};
        const attempt = async (name: string, f: () => Promise<string>) => {
          try {
            out[name] = await f();
          } catch (e) {
            out[name] = `blocked: ${(e as Error).name}`;
          }
        };
        // Cookies planted by script: deeper paths, the whole dashboard domain, prefixed names.
        for (const c of [
          `warren_session=${planted}; path=/deeper`,
          `__Host-warren_session=${planted}; path=/; secure`,
          `__Host-warren_session=${planted}; path=/deeper; secure`,
          `warren_session=${planted}; domain=dashboard.localhost; path=/`,
          `__HOST-warren_session=${planted}; domain=dashboard.localhost; path=/; secure`,
          `__Secure-warren_session=${planted}; domain=dashboard.localhost; path=/; secure`,
          `theme=${planted}; domain=dashboard.localhost; path=/`,
        ])
          document.cookie = c;
        // ...and by A's upstream, through the proxy.
        await attempt('plant', async () => (await fetch('/plant')).text());
        out.visibleCookies = document.cookie;

        await attempt('fetchB', async () => (await fetch(`${b}/`, { credentials: 'include' })).text());
        await attempt('fetchBSecret', async () =>
          (await fetch(`${b}/secret`, { credentials: 'include' })).text(),
        );
        await attempt('fetchBNoCors', async () => {
          const r = await fetch(`${b}/secret`, { credentials: 'include', mode: 'no-cors' });
          return `${r.type}:${await r.text()}`;
        });
        await attempt('postB', async () => {
          const r = await fetch(`${b}/`, {
            method: 'POST',
            credentials: 'include',
            mode: 'no-cors',
            body: 'x',
          });
          return `${r.type}`;
        });
        await attempt('scriptB', () => {
          return new Promise((resolve) => {
            const s = document.createElement('script');
            s.src = `${b}/secret.js`;
            s.onload = () => resolve(`loaded: ${window.leaked}`);
            s.onerror = () => resolve('error');
            document.head.append(s);
          });
        });
        await attempt('iframeB', () => {
          return new Promise((resolve) => {
            const f = document.createElement('iframe');
            f.src = `${b}/`;
            f.onload = () => {
              try {
                resolve(`read: ${f.contentDocument?.body?.textContent ?? 'no document'}`);
              } catch (e) {
                resolve(`blocked: ${(e as Error).name}`);
              }
            };
            document.body.append(f);
          });
        });
        const ws = (url: string) =>
          new Promise<string>((resolve) => {
            const s = new WebSocket(url);
            s.onopen = () => s.send('ping');
            s.onmessage = (e) => {
              resolve(`echo: ${e.data}`);
              s.close();
            };
            s.onerror = () => resolve('error');
          });
        await attempt('wsB', () => ws(`${b.replace('http', 'ws')}/ws`));
        await attempt('wsOwn', () => ws(`${location.origin.replace('http', 'ws')}/ws`));
        // The platform's API, on its own origin and on this one.
        await attempt('apiList', async () =>
          (await fetch(`${api}/v1/tenants`, { credentials: 'include' })).text(),
        );
        await attempt('apiStop', async () => {
          const r = await fetch(`${api}/v1/tenants/tenant-b/stop`, {
            method: 'POST',
            credentials: 'include',
            mode: 'no-cors',
          });
          return r.type;
        });
        await attempt('apiSession', async () => {
          const r = await fetch(`${api}/v1/sessions`, {
            method: 'POST',
            credentials: 'include',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ tenant: 'tenant-b' }),
          });
          return r.text();
        });
        await attempt('apiHere', async () => (await fetch('/v1/tenants')).text());
        return out;
      },
      { b: origin('tenant-b'), api: t.url, planted: PLANTED },
    );

    // Nothing of B's reached A's script.
    assert.ok(!JSON.stringify(found).includes(SECRET), JSON.stringify(found, null, 1));
    for (const k of ['fetchB', 'fetchBSecret', 'apiList', 'apiSession'])
      assert.match(found[k]!, /^blocked/, k);
    assert.equal(found.fetchBNoCors, 'opaque:');
    assert.equal(found.scriptB, 'error');
    assert.match(found.iframeB!, /^(blocked|read: no document)/);
    assert.equal(found.wsB, 'error');
    assert.equal(found.wsOwn, 'echo: ping');
    assert.equal(JSON.parse(found.apiHere!).vm, 'a', "A's /v1/… is A's own app, not the platform");
    // B's VM was never reached from A's page: the proxy refused every such request, even those
    // the browser sent with the visitor's cookie (sibling origins are the same site).
    assert.deepEqual(log.b.slice(bBefore), []);
    // The API answered nothing useful and did nothing.
    const b = await call(t.url, 'GET', '/v1/tenants/tenant-b', { token: t.adminToken });
    assert.equal(b.body.desiredState, 'running');
    const stops = await call(t.url, 'GET', '/v1/audit?action=tenant.stop', { token: t.adminToken });
    assert.deepEqual(stops.body.events, []);

    // The cookie jar: the sessions are untouched (no script or VM answer replaced or cleared
    // them), no cookie a VM sent has a Domain, and nothing named like the session is readable.
    assert.deepEqual(await sessionCookies(), sessions);
    const jar = await context.cookies();
    for (const c of jar.filter((x) => ['tossed', 'outer'].includes(x.name)))
      assert.equal(c.domain, 'tenant-a.dashboard.localhost', `${c.name} left A's host`);
    assert.ok(!jar.some((c) => c.value === PLANTED && c.name === '__Host-warren_session'));
    assert.doesNotMatch(found.visibleCookies!, /__Host-warren_session/);

    // B still works for the visitor, over HTTP and WebSocket, and its VM never sees a planted
    // cookie or a session: A's tossed cookies and the Clear-Site-Data of A's VM changed nothing.
    const pageB = await context.newPage();
    await pageB.goto(`${origin('tenant-b')}/`);
    assert.equal(await pageB.locator('#secret').textContent(), SECRET);
    const echo = await pageB.evaluate(
      () =>
        new Promise<string>((resolve) => {
          const s = new WebSocket(`${location.origin.replace('http', 'ws')}/ws`);
          s.onopen = () => s.send('hello b');
          s.onmessage = (e) => resolve(String(e.data));
          s.onerror = () => resolve('error');
        }),
    );
    assert.equal(echo, 'hello b');
    // (A's script could toss `theme=…; Domain=dashboard.localhost` to B: the browser allows it
    // unless the dashboard domain is a public suffix, and no proxy can tell it from B's own
    // cookie. Only the platform's cookies are the platform's to guard; see docs/architecture.md.)
    for (const r of log.b) {
      assert.doesNotMatch(r.headers.cookie ?? '', /warren_session/, `${r.url}: ${r.headers.cookie}`);
      for (const name of ['tossed', 'outer']) assert.ok(!(r.headers.cookie ?? '').includes(`${name}=`), name);
    }
    assert.ok(log.b.some((r) => r.upgrade));
    // A's own dashboard still works too: the look-alikes it planted are ignored.
    await page.goto(`${origin('tenant-a')}/`);
    assert.equal(await page.locator('#who').textContent(), 'tenant-a');
    for (const r of log.a) assert.doesNotMatch(r.headers.cookie ?? '', /warren_session/);
  });

  test('the path form honours no cookie, even a valid session planted in the browser', async () => {
    // A valid session of tenant B, as the store would hold one, set in the browser for the API's
    // origin under both names the platform ever used.
    const id = randomBytes(32).toString('base64url');
    const key = await call(t.url, 'GET', '/v1/keys', { token: t.adminToken });
    const b = (await call(t.url, 'GET', '/v1/tenants/tenant-b', { token: t.adminToken })).body;
    await t.cp.store.db
      .insertInto('sessions')
      .values({
        id_hash: createHash('sha256').update(id).digest('hex'),
        key_id: key.body.keys.find((k: { tenantId?: string }) => k.tenantId === b.id).id,
        tenant_id: b.id,
        created_at: new Date().toISOString(),
        expires_at: new Date(Date.now() + 3600_000).toISOString(),
      })
      .execute();
    await context.addCookies([
      { name: 'warren_session', value: id, domain: '127.0.0.1', path: '/', httpOnly: true },
      {
        name: '__Host-warren_session',
        value: id,
        domain: '127.0.0.1',
        path: '/',
        httpOnly: true,
        secure: true,
      },
    ]);
    const set = (await context.cookies(t.url)).filter((c) => c.value === id).map((c) => c.name);
    assert.deepEqual(set.sort(), ['__Host-warren_session', 'warren_session']);
    const page = await context.newPage();
    const before = log.b.length;
    const res = await page.goto(`${t.url}/t/tenant-b/dashboard/`);
    assert.equal(res?.status(), 401);
    assert.equal(log.b.length, before);
  });
});
