/**
 * The dashboard proxy, whole chain on loopback: a real control plane → the host agent's real
 * remote API (createRemoteApi, in process) → an HTTP + WebSocket server standing in for the
 * tenant VM's dashboard. Only the VM is simulated: the remote API resolves each VM's guest IP
 * through the production `guestIpTarget`, reading a VmManager stand-in whose VMs "have" guest
 * IPs on 127.0.0.0/8 (tenant A: 127.0.0.2, B: 127.0.0.4). Decoy servers on the same port of
 * 127.0.0.1 and 127.0.0.3 must never be reached, whatever a client or the control plane asks.
 *
 * Through a real VM this needs tenant networking (a TAP link and `network.guestIp` in the VM's
 * status): then a server in the guest on the dashboard port replaces the stand-in upstream.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  request,
  type Server,
} from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RegisteredRoute } from '@warren/control-plane';
import { createRemoteApi, type Host } from '@warren/host-agent';
import { vmIdOfTenant } from '@warren/protocol';
import type { FastifyInstance } from 'fastify';
import { call, createTenantWithKey, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { ProxyAgent } from '../helpers/proxy-agent.ts';
import { acceptWebSocketEcho } from '../helpers/ws-echo.ts';

const BODY_LIMIT = 256 * 1024;
const TIMEOUT_MS = 1500;
const WS_IDLE_MS = 1500;
const RESPONSE_IDLE_MS = 1500;
/** The host agent's own idle limits, in the tests that talk to it directly. */
const AGENT_IDLE_MS = 1000;

/* ------------------------------------------------------------------ the VM's dashboard */

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  bytes: number;
  sha256: string;
}

const HOSTILE_COOKIES = [
  'app=1; Path=/',
  'tossed=1; Domain=dashboard.localhost; Path=/; SameSite=Lax',
  'outer=1; Path=/t/tenant-b/dashboard/',
  'up=1; path=/t; Domain=127.0.0.1',
  'inside=1; Path=/t/tenant-a/dashboard/x',
  '=warren_session=chosen-by-the-tenant',
  'nameless',
  'warren_session=chosen-by-the-tenant; Path=/; HttpOnly',
  '__Host-warren_session=chosen-by-the-tenant; Path=/; Secure; HttpOnly',
  ' WARREN_Session =chosen-by-the-tenant; Path=/',
  'other=2; Path=/',
];

/** What the stand-in dashboard saw, per listener, for assertions. */
const seen: Record<string, Seen[]> = {};
const upgrades: Record<string, IncomingMessage['headers'][]> = {};
let releaseStream: (() => void) | undefined;

/** The stand-in for a tenant's dashboard: echoes what it saw, plus a few special paths. */
function dashboardServer(who: string): Server {
  seen[who] = [];
  upgrades[who] = [];
  const server = createServer((req, res) => {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (c: Buffer) => {
      bytes += c.length;
      hash.update(c);
    });
    req.on('end', () => {
      const s: Seen = {
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        bytes,
        sha256: hash.digest('hex'),
      };
      seen[who]!.push(s);
      if (req.url === '/teapot') {
        res.writeHead(418, { 'content-type': 'text/plain', 'x-app': 'yes' }).end("I'm a teapot");
      } else if (req.url === '/cookies') {
        // Everything a hostile dashboard may try on the browser through its answer.
        res.setHeader('set-cookie', HOSTILE_COOKIES);
        res.setHeader('x-warren-upstream', 'forged');
        res.setHeader('service-worker-allowed', '/');
        res.setHeader('clear-site-data', '"cookies", "storage"');
        res.setHeader('strict-transport-security', 'max-age=31536000; includeSubDomains');
        res.setHeader('alt-svc', 'h2="evil.example:443"');
        res.setHeader('nel', '{"report_to":"x","max_age":86400,"include_subdomains":true}');
        res.setHeader(
          'report-to',
          '{"group":"x","max_age":86400,"endpoints":[{"url":"https://evil.example/r"}]}',
        );
        res.setHeader('reporting-endpoints', 'x="https://evil.example/r"');
        res.end('cookies');
      } else if (req.url === '/stall') {
        // Headers and a first chunk, then silence for good: only an idle limit ends it.
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.write('first-chunk');
      } else if (req.url === '/stream') {
        // The first chunk, then nothing until the test says so: shows the proxy streams.
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.write('first-chunk');
        releaseStream = () => res.end('-rest');
      } else if (req.url?.startsWith('/big')) {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const chunk = Buffer.alloc(64 * 1024, 7);
        let left = 128; // 8 MiB
        const pump = () => {
          while (left > 0) {
            left--;
            if (!res.write(chunk)) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
      } else if (req.url === '/hang') {
        // Never answers: the control plane's timeout must.
      } else {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ who, ...s }));
      }
    });
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    upgrades[who]!.push(req.headers);
    if (req.url === '/nows') {
      socket.end('HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nnows!');
      return;
    }
    acceptWebSocketEcho(req, socket, head);
  });
  return server;
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/* -------------------------------------------------------------------------------- set-up */

let t: TestControlPlane;
let agent: ProxyAgent;
let port = 0;
const servers: Server[] = [];
const tenants: Record<string, { id: string; key: string; keyId: string }> = {};
let cpHost = '';

async function startDashboards(): Promise<void> {
  // One port on several loopback addresses: the tenants' "VMs" and the decoys.
  for (let attempt = 0; ; attempt++) {
    const a = dashboardServer('a');
    await listen(a, '127.0.0.2', 0);
    port = (a.address() as AddressInfo).port;
    const rest = [
      [dashboardServer('b'), '127.0.0.4'],
      [dashboardServer('decoy-loopback'), '127.0.0.1'],
      [dashboardServer('decoy-other'), '127.0.0.3'],
    ] as const;
    try {
      for (const [s, host] of rest) await listen(s, host, port);
      servers.push(a, ...rest.map(([s]) => s));
      return;
    } catch (e) {
      for (const s of [a, ...rest.map(([s]) => s)]) s.close();
      if (attempt > 5) throw e;
    }
  }
}

before(async () => {
  await startDashboards();
  t = await openTestControlPlane({
    dashboardBodyLimitBytes: BODY_LIMIT,
    dashboardTimeoutMs: TIMEOUT_MS,
    dashboardWsIdleMs: WS_IDLE_MS,
    dashboardResponseIdleMs: RESPONSE_IDLE_MS,
  });
  cpHost = new URL(t.url).host;
  agent = await new ProxyAgent().start(t.url, t.joinToken);
  agent.guestIps.set('tenant-a', '127.0.0.2');
  agent.guestIps.set('tenant-b', '127.0.0.4');
  agent.guestIps.set('no-network', undefined);
  agent.guestIps.set('nothing-listens', '127.0.0.5');
  agent.guestIps.set('sleepy', '127.0.0.2');
  for (const name of ['tenant-a', 'tenant-b', 'no-network', 'nothing-listens', 'sleepy']) {
    const { created, key } = await createTenantWithKey(t, { name, dashboardPort: port });
    tenants[name] = { id: created.tenant.id, key: key.token, keyId: key.key.id };
  }
  for (let i = 0; i < 3; i++) await agent.heartbeat();
  const list = await call(t.url, 'GET', '/v1/tenants', { token: t.adminToken });
  assert.ok(
    list.body.tenants.every((x: { state: string }) => x.state === 'running'),
    list.text,
  );
});

after(async () => {
  await agent?.stop();
  await t?.close();
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
});

/* ------------------------------------------------------------------------------ helpers */

const dash = (tenant: string, path = '/') => `${t.url}/t/${tenant}/dashboard${path}`;
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

async function json(res: Response): Promise<any> {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    return { text };
  }
}

/** A raw HTTP/1.1 exchange, for what fetch will not send (dot segments, odd targets, Host). */
function raw(text: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const s = connect(Number(new URL(t.url).port), '127.0.0.1');
    let out = '';
    s.on('data', (d) => (out += d));
    s.on('end', () => resolve({ status: Number(out.split(' ')[1]), text: out }));
    s.on('error', reject);
    s.write(text);
  });
}

/** A WebSocket handshake whose refusal we want to read (status and body), not just "error". */
function handshake(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string; socket?: Socket }> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': randomBytes(16).toString('base64'),
        ...headers,
      },
    });
    req.on('upgrade', (_res, socket) => resolve({ status: 101, body: '', socket }));
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function openWs(url: string, headers: Record<string, string>): Promise<WebSocket> {
  const ws = new WebSocket(url, { headers });
  ws.binaryType = 'arraybuffer';
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`WebSocket to ${url} failed`));
  });
  return ws;
}

function echo(ws: WebSocket, data: string | Buffer): Promise<string | Buffer> {
  return new Promise((resolve) => {
    ws.onmessage = (e) => resolve(typeof e.data === 'string' ? e.data : Buffer.from(e.data as ArrayBuffer));
    ws.send(data);
  });
}

const DOMAIN = 'dashboard.localhost';

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  body: any;
}

/**
 * One request to a tenant's dashboard origin, as a browser sends it: to the control plane's
 * port with `Host: <tenant>.dashboard.localhost:<port>` (fetch may not set Host).
 */
function onOrigin(
  tenant: string,
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(`${t.url}${path}`, {
      method: opts.method ?? 'GET',
      headers: {
        host: `${tenant}.${DOMAIN}:${new URL(t.url).port}`,
        ...(opts.body === undefined ? {} : { 'content-length': String(Buffer.byteLength(opts.body)) }),
        ...opts.headers,
      },
    });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => {
        let body: any;
        try {
          body = JSON.parse(text);
        } catch {
          body = { text };
        }
        resolve({ status: res.statusCode!, headers: res.headers, text, body });
      });
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** The status of `GET /` with `Host: <host>:<port>` and a cookie. */
async function request0(host: string, cookie: string): Promise<number> {
  const r = await raw(
    `GET / HTTP/1.1\r\nHost: ${host}:${new URL(t.url).port}\r\nCookie: ${cookie}\r\nConnection: close\r\n\r\n`,
  );
  return r.status;
}

/**
 * A valid session of tenant `name` written straight into the store, as a log-in would leave
 * it: the attack tests below then need no log-in flow (and run the same against older code).
 */
async function mintSession(name: string): Promise<string> {
  const id = randomBytes(32).toString('base64url');
  await t.cp.store.db
    .insertInto('sessions')
    .values({
      id_hash: createHash('sha256').update(id).digest('hex'),
      key_id: tenants[name]!.keyId,
      tenant_id: tenants[name]!.id,
      created_at: new Date().toISOString(),
      expires_at: new Date(Date.now() + 3600_000).toISOString(),
    })
    .execute();
  return id;
}

const originOf = (tenant: string) => `http://${tenant}.${DOMAIN}:${new URL(t.url).port}`;

/**
 * Logs a browser in to a tenant's dashboard origin: `POST /v1/sessions` for a one-time link,
 * then the link on that origin. `cookie` is what the browser then sends (`name=value`).
 */
async function login(
  token: string,
  body: unknown = {},
): Promise<{ status: number; cookie: string; setCookie: string; body: any; loginUrl: URL | undefined }> {
  const res = await call(t.url, 'POST', '/v1/sessions', { token, body });
  if (res.status !== 201)
    return { status: res.status, cookie: '', setCookie: '', body: res.body, loginUrl: undefined };
  const loginUrl = new URL(res.body.loginUrl);
  const page = await onOrigin(loginUrl.hostname.split('.')[0]!, `${loginUrl.pathname}${loginUrl.search}`);
  const setCookie = page.headers['set-cookie']?.[0] ?? '';
  return { status: page.status, setCookie, cookie: setCookie.split(';')[0]!, body: res.body, loginUrl };
}

/* -------------------------------------------------------------------------------- tests */

describe('HTTP through control plane → host agent → VM', () => {
  test('GET and POST reach the tenant VM and its answer comes back', async () => {
    const get = await fetch(dash('tenant-a', '/echo?x=1&y=%2F'), {
      headers: bearer(tenants['tenant-a']!.key),
    });
    assert.equal(get.status, 200);
    const got = await json(get);
    assert.equal(got.who, 'a');
    assert.equal(got.method, 'GET');
    assert.equal(got.url, '/echo?x=1&y=%2F');
    assert.match(get.headers.get('x-request-id') ?? '', /^req_/);

    const body = randomBytes(200 * 1024);
    const post = await fetch(dash('tenant-a', '/upload'), {
      method: 'POST',
      headers: { ...bearer(tenants['tenant-a']!.key), 'content-type': 'application/octet-stream' },
      body,
    });
    const posted = await json(post);
    assert.equal(post.status, 200);
    assert.equal(posted.method, 'POST');
    assert.equal(posted.bytes, body.length);
    assert.equal(posted.sha256, createHash('sha256').update(body).digest('hex'));

    // JSON bodies are not parsed (or refused) by the control plane: they are the app's.
    const put = await fetch(dash('tenant-a', '/json'), {
      method: 'PUT',
      headers: { ...bearer(tenants['tenant-a']!.key), 'content-type': 'application/json' },
      body: '{"not": valid json',
    });
    assert.equal(put.status, 200);
    assert.equal((await json(put)).bytes, 18);

    // Each tenant's key reaches its own VM.
    const b = await fetch(dash('tenant-b', '/'), { headers: bearer(tenants['tenant-b']!.key) });
    assert.equal((await json(b)).who, 'b');
  });

  test('paths: the prefix is removed, the query kept, dot segments resolved, no-slash redirects', async () => {
    const key = bearer(tenants['tenant-a']!.key);
    assert.equal((await json(await fetch(dash('tenant-a', '/'), { headers: key }))).url, '/');
    assert.equal(
      (await json(await fetch(dash(tenants['tenant-a']!.id, '/by-id'), { headers: key }))).url,
      '/by-id',
    );
    const noSlash = await fetch(`${t.url}/t/tenant-a/dashboard?q=1`, { headers: key, redirect: 'manual' });
    assert.equal(noSlash.status, 308);
    assert.equal(noSlash.headers.get('location'), '/t/tenant-a/dashboard/?q=1');
    // Sent raw, as a hostile client would: the dot segments cannot leave the VM's path space.
    const dots = await raw(
      `GET /t/tenant-a/dashboard/a/../../..%2f..%2fv1/x?q HTTP/1.1\r\nHost: ${cpHost}\r\nAuthorization: Bearer ${tenants['tenant-a']!.key}\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(dots.status, 200, dots.text);
    assert.equal(seen.a!.at(-1)!.url, '/..%2f..%2fv1/x?q');
    // An Upgrade that is not a WebSocket handshake (curl --http2 sends h2c) is an ordinary request.
    const h2c = await raw(
      `POST /t/tenant-a/dashboard/h2c HTTP/1.1\r\nHost: ${cpHost}\r\nAuthorization: Bearer ${tenants['tenant-a']!.key}\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: 3\r\n\r\nabc`,
    );
    assert.equal(h2c.status, 200, h2c.text);
    assert.equal(seen.a!.at(-1)!.bytes, 3);
    assert.equal(seen.a!.at(-1)!.headers.upgrade, undefined);
    const head = await fetch(dash('tenant-a', '/echo'), { method: 'HEAD', headers: key });
    assert.equal(head.status, 200);
    assert.equal(seen.a!.at(-1)!.method, 'HEAD');
  });

  test("the VM's answer passes as it is, with the agent's marker removed", async () => {
    const key = bearer(tenants['tenant-a']!.key);
    const teapot = await fetch(dash('tenant-a', '/teapot'), { headers: key });
    assert.equal(teapot.status, 418);
    assert.equal(teapot.headers.get('x-app'), 'yes');
    assert.equal(await teapot.text(), "I'm a teapot");
    const cookies = await fetch(dash('tenant-a', '/cookies'), { headers: key });
    assert.equal(cookies.status, 200);
    assert.equal(cookies.headers.get('x-warren-upstream'), null);
  });

  test("path form: a VM's cookies stay inside its prefix and host; nameless and platform-named ones are dropped", async () => {
    // On the API's origin, shared by every tenant: cookies stay inside the prefix as the client
    // named the tenant and lose any Domain.
    for (const ref of ['tenant-a', tenants['tenant-a']!.id]) {
      const cookies = await fetch(dash(ref, '/cookies'), { headers: bearer(tenants['tenant-a']!.key) });
      const p = `/t/${ref}/dashboard`;
      const inside = ref === 'tenant-a' ? `${p}/x` : `${p}/`;
      assert.deepEqual(cookies.headers.getSetCookie(), [
        `app=1; Path=${p}/`,
        `tossed=1; SameSite=Lax; Path=${p}/`,
        `outer=1; Path=${p}/`,
        `up=1; Path=${p}/`,
        `inside=1; Path=${inside}`,
        `other=2; Path=${p}/`,
      ]);
      // A dashboard's service worker may not claim the whole origin (other dashboards, the API).
      assert.equal(cookies.headers.get('service-worker-allowed'), null);
    }
  });

  test("host form: a VM's cookies never leave its host (no Domain); nameless and platform-named ones are dropped", async () => {
    // The origin is the tenant's own, so paths are free, but a cookie never leaves the host:
    // the sibling origins and the API never get it.
    const cookie = `__Host-warren_session=${await mintSession('tenant-a')}`;
    const own = await onOrigin('tenant-a', '/cookies', { headers: { cookie } });
    assert.equal(own.status, 200, own.text);
    assert.deepEqual(own.headers['set-cookie'], [
      'app=1; Path=/',
      'tossed=1; SameSite=Lax; Path=/',
      'outer=1; Path=/t/tenant-b/dashboard/',
      'up=1; Path=/t',
      'inside=1; Path=/t/tenant-a/dashboard/x',
      'other=2; Path=/',
    ]);
    assert.equal(own.headers['service-worker-allowed'], '/');
  });

  test('Clear-Site-Data, Strict-Transport-Security and the other origin-wide headers of a VM are dropped', async () => {
    const origin = [
      'clear-site-data',
      'strict-transport-security',
      'alt-svc',
      'nel',
      'report-to',
      'reporting-endpoints',
    ];
    const viaPath = await fetch(dash('tenant-a', '/cookies'), { headers: bearer(tenants['tenant-a']!.key) });
    for (const h of origin) assert.equal(viaPath.headers.get(h), null, `${h} in the path form`);
    const cookie = `__Host-warren_session=${await mintSession('tenant-a')}`;
    const viaHost = await onOrigin('tenant-a', '/cookies', { headers: { cookie } });
    assert.equal(viaHost.status, 200);
    for (const h of origin) assert.equal(viaHost.headers[h], undefined, `${h} on the origin`);
  });

  test('responses stream: the first bytes arrive while the VM is still writing; 8 MiB arrive whole', async () => {
    const res = await fetch(dash('tenant-a', '/stream'), { headers: bearer(tenants['tenant-a']!.key) });
    const reader = res.body!.getReader();
    const first = await reader.read();
    assert.equal(Buffer.from(first.value!).toString(), 'first-chunk');
    releaseStream!();
    let rest = '';
    for (let r = await reader.read(); !r.done; r = await reader.read())
      rest += Buffer.from(r.value).toString();
    assert.equal(rest, '-rest');

    const big = await fetch(dash('tenant-a', '/big'), { headers: bearer(tenants['tenant-a']!.key) });
    const bytes = Buffer.from(await big.arrayBuffer());
    assert.equal(bytes.length, 8 * 1024 * 1024);
    assert.ok(bytes.every((b) => b === 7));
  });

  test('the VM sees no platform credential, other cookies intact, and our X-Forwarded-*', async () => {
    const a = tenants['tenant-a']!;
    const session = await login(a.key);
    const forged = {
      'x-forwarded-for': '6.6.6.6',
      'x-forwarded-host': 'evil.example',
      'x-forwarded-proto': 'https',
      'x-forwarded-prefix': '/evil',
      'x-forwarded-port': '1',
      forwarded: 'for=6.6.6.6;host=evil.example',
      'x-real-ip': '6.6.6.6',
      'x-warren-upstream': '1',
    };
    const cookie = `theme=dark; warren_session=x; =nameless; ${session.cookie}; lang=en`;
    const viaPath = await fetch(dash('tenant-a', '/headers'), {
      headers: { authorization: `Bearer ${a.key}`, cookie, ...forged },
    });
    assert.equal(viaPath.status, 200);
    const p = seen.a!.at(-1)!.headers;
    const viaHost = await onOrigin('tenant-a', '/headers', {
      headers: { authorization: `Bearer ${a.key}`, cookie, ...forged },
    });
    assert.equal(viaHost.status, 200, viaHost.text);
    const h = seen.a!.at(-1)!.headers;
    for (const x of [p, h]) {
      assert.equal(x.authorization, undefined);
      assert.equal(x.cookie, 'theme=dark; lang=en');
      assert.equal(x['x-forwarded-for'], '127.0.0.1');
      assert.equal(x['x-forwarded-proto'], 'http');
      for (const gone of ['x-forwarded-port', 'forwarded', 'x-real-ip', 'x-warren-upstream']) {
        assert.equal(x[gone], undefined, gone);
      }
      // The host header is the VM's own address, not whatever the client named.
      assert.equal(x.host, `127.0.0.2:${port}`);
      const all = JSON.stringify(x);
      for (const secret of [a.key, t.adminToken, agent.agentToken, session.cookie.split('=')[1]!]) {
        assert.ok(!all.includes(secret), 'a platform credential reached the VM');
      }
    }
    assert.equal(p['x-forwarded-host'], cpHost);
    assert.equal(p['x-forwarded-prefix'], '/t/tenant-a/dashboard');
    // On its own origin the app is at / and needs no prefix.
    assert.equal(h['x-forwarded-host'], `tenant-a.${DOMAIN}:${new URL(t.url).port}`);
    assert.equal(h['x-forwarded-prefix'], undefined);
    // Only the session cookie: the VM gets no Cookie header at all.
    await onOrigin('tenant-a', '/only-session', { headers: { cookie: session.cookie } });
    assert.equal(seen.a!.at(-1)!.headers.cookie, undefined);
  });
});

describe('WebSocket through the chain', () => {
  test('text and binary frames echo through; the VM sees no credential', async () => {
    const a = tenants['tenant-a']!;
    const ws = await openWs(`${dash('tenant-a', '/ws').replace('http', 'ws')}?room=1`, {
      ...bearer(a.key),
      cookie: 'theme=dark',
    });
    assert.equal(await echo(ws, 'hello through three hops'), 'hello through three hops');
    const bin = randomBytes(70_000); // a 64-bit length frame
    assert.deepEqual(await echo(ws, bin), bin);
    assert.deepEqual(await echo(ws, Buffer.from([0, 1, 2, 255])), Buffer.from([0, 1, 2, 255]));
    ws.close();
    const h = upgrades.a!.at(-1)!;
    assert.equal(h.authorization, undefined);
    assert.equal(h.cookie, 'theme=dark');
    assert.equal(h['x-forwarded-prefix'], '/t/tenant-a/dashboard');
    assert.equal(h.upgrade, 'websocket');
    assert.ok(!JSON.stringify(h).includes(agent.agentToken));
  });

  test('on its origin with the session cookie; refused without it (401), for another tenant (404), from another origin (403)', async () => {
    const session = await login(tenants['tenant-a']!.key);
    const on = (tenant: string) => ({ host: `${tenant}.${DOMAIN}:${new URL(t.url).port}` });
    const ws = await handshake(`${t.url}/ws`, { ...on('tenant-a'), cookie: `theme=dark; ${session.cookie}` });
    assert.equal(ws.status, 101);
    ws.socket!.destroy();
    assert.equal(upgrades.a!.at(-1)!.cookie, 'theme=dark');

    const none = await handshake(`${t.url}/ws`, on('tenant-a'));
    assert.equal(none.status, 401);
    assert.equal(JSON.parse(none.body).error.code, 'UNAUTHENTICATED');
    const other = await handshake(`${t.url}/ws`, { ...on('tenant-b'), cookie: session.cookie });
    assert.equal(other.status, 404);
    assert.equal(JSON.parse(other.body).error.code, 'NOT_FOUND');
    // A page of another origin (a sibling dashboard is still "same site") cannot use the cookie.
    for (const origin of ['https://evil.example', originOf('tenant-b'), t.url]) {
      const cross = await handshake(`${t.url}/ws`, { ...on('tenant-a'), cookie: session.cookie, origin });
      assert.equal(cross.status, 403, origin);
    }
    const sameOrigin = await handshake(`${t.url}/ws`, {
      ...on('tenant-a'),
      cookie: session.cookie,
      origin: originOf('tenant-a'),
    });
    assert.equal(sameOrigin.status, 101);
    sameOrigin.socket!.destroy();
    // The path form takes no cookie, for WebSocket neither.
    const path = await handshake(dash('tenant-a', '/ws'), { cookie: session.cookie });
    assert.equal(path.status, 401);
  });

  test('the VM refusing the upgrade is passed through; an idle tunnel is closed', async () => {
    const refused = await handshake(dash('tenant-a', '/nows'), bearer(tenants['tenant-a']!.key));
    assert.equal(refused.status, 404);
    assert.equal(refused.body, 'nows!');

    const ws = await openWs(dash('tenant-a', '/ws').replace('http', 'ws'), bearer(tenants['tenant-a']!.key));
    const started = Date.now();
    const closed = new Promise<void>((resolve) => (ws.onclose = () => resolve()));
    await closed;
    const idle = Date.now() - started;
    assert.ok(idle >= WS_IDLE_MS - 100 && idle < WS_IDLE_MS + 3000, `closed after ${idle} ms`);
  });
});

describe('authentication and sessions', () => {
  test('no credentials 401, tenant B on A 404 (as for a missing tenant), admin works', async () => {
    const none = await fetch(dash('tenant-a', '/'));
    assert.equal(none.status, 401);
    assert.equal((await json(none)).error.code, 'UNAUTHENTICATED');
    for (const ref of ['tenant-a', tenants['tenant-a']!.id]) {
      const other = await fetch(dash(ref, '/'), { headers: bearer(tenants['tenant-b']!.key) });
      assert.equal(other.status, 404);
      const body = await json(other);
      const ghost = ref.startsWith('ten_') ? 'ten_0000000000000000' : 'no-such-tenant';
      const missing = await json(
        await fetch(dash(ghost, '/'), { headers: bearer(tenants['tenant-b']!.key) }),
      );
      assert.equal(body.error.message, missing.error.message.replace(ghost, ref));
    }
    const admin = await fetch(dash('tenant-a', '/as-admin'), { headers: bearer(t.adminToken) });
    assert.equal(admin.status, 200);
    assert.equal((await json(admin)).url, '/as-admin');
    for (const token of [agent.hostToken, t.joinToken]) {
      assert.equal((await fetch(dash('tenant-a', '/'), { headers: bearer(token) })).status, 403);
    }
  });

  test("log in by a one-time link: a host-only __Host- cookie on the tenant's own origin; log out", async () => {
    const a = tenants['tenant-a']!;
    const issued = await call(t.url, 'POST', '/v1/sessions', { token: a.key, body: {} });
    assert.equal(issued.status, 201, issued.text);
    assert.equal(issued.body.tenantName, 'tenant-a');
    assert.equal(issued.body.dashboardUrl, `${originOf('tenant-a')}/`);
    const link = new URL(issued.body.loginUrl);
    assert.equal(link.origin, originOf('tenant-a'));
    assert.equal(link.pathname, '/.warren/login');
    // The API's origin gets no cookie: none would work there.
    const raw = await fetch(`${t.url}/v1/sessions`, {
      method: 'POST',
      headers: { ...bearer(a.key), 'content-type': 'application/json' },
      body: '{}',
    });
    assert.equal(raw.headers.get('set-cookie'), null);
    // Only hashes are stored.
    const code = link.searchParams.get('code')!;
    const stored = await t.cp.store.db.selectFrom('dashboard_logins').selectAll().execute();
    assert.ok(!JSON.stringify(stored).includes(code));

    const page = await onOrigin('tenant-a', `${link.pathname}${link.search}`);
    assert.equal(page.status, 200, page.text);
    const setCookie = page.headers['set-cookie']![0]!;
    assert.match(setCookie, /^__Host-warren_session=[A-Za-z0-9_-]{43}; /);
    for (const attr of ['HttpOnly', 'Secure', 'SameSite=Strict', 'Path=/', 'Max-Age=43200'])
      assert.ok(setCookie.split('; ').includes(attr), `${attr} in ${setCookie}`);
    assert.doesNotMatch(setCookie, /domain/i);
    assert.equal(page.headers['referrer-policy'], 'no-referrer');
    assert.match(page.text, /http-equiv="refresh" content="0;url=\/"/);
    const cookie = setCookie.split(';')[0]!;
    const sessions = await t.cp.store.db.selectFrom('sessions').selectAll().execute();
    assert.ok(!JSON.stringify(sessions).includes(cookie.split('=')[1]!));

    // The link works once.
    const again = await onOrigin('tenant-a', `${link.pathname}${link.search}`);
    assert.equal(again.status, 401);
    assert.equal(again.body.error.code, 'UNAUTHENTICATED');

    const use = await onOrigin('tenant-a', '/with-cookie?x=1', { headers: { cookie: `x=1; ${cookie}` } });
    assert.equal(use.status, 200, use.text);
    assert.equal(use.body.who, 'a');
    assert.equal(use.body.url, '/with-cookie?x=1');

    const out = await onOrigin('tenant-a', '/.warren/logout', { method: 'POST', headers: { cookie } });
    assert.equal(out.status, 204, out.text);
    assert.match(out.headers['set-cookie']![0]!, /^__Host-warren_session=; .*Max-Age=0/);
    assert.equal((await onOrigin('tenant-a', '/', { headers: { cookie } })).status, 401);

    const audit = await call(t.url, 'GET', '/v1/audit?action=session.create', { token: t.adminToken });
    assert.ok(audit.body.events.some((e: { actor: string }) => e.actor === `key:${a.keyId}`));
    const ended = await call(t.url, 'GET', '/v1/audit?action=session.delete', { token: t.adminToken });
    assert.ok(ended.body.events.some((e: { actor: string }) => e.actor === `key:${a.keyId}`));
  });

  test("a login link works only on its tenant's origin, once, before it expires", async () => {
    const issue = async () => {
      const r = await call(t.url, 'POST', '/v1/sessions', { token: tenants['tenant-a']!.key, body: {} });
      const u = new URL(r.body.loginUrl);
      return `${u.pathname}${u.search}`;
    };
    // Tenant A's link opened on B's origin: refused, and spent.
    const link = await issue();
    const onB = await onOrigin('tenant-b', link);
    assert.equal(onB.status, 401);
    assert.equal(onB.headers['set-cookie'], undefined);
    assert.equal((await onOrigin('tenant-a', link)).status, 401);
    // Expired.
    const late = await issue();
    await t.cp.store.db
      .updateTable('dashboard_logins')
      .set({ expires_at: new Date(Date.now() - 1000).toISOString() })
      .execute();
    assert.equal((await onOrigin('tenant-a', late)).status, 401);
    for (const bad of ['/.warren/login', '/.warren/login?code=x', `/.warren/login?code=${'A'.repeat(43)}`]) {
      const r = await onOrigin('tenant-a', bad);
      assert.equal(r.status, 401, bad);
      assert.equal(r.headers['set-cookie'], undefined);
    }
    // Other /.warren/ paths are the platform's and answer 404; the app never sees them.
    const before = seen.a!.length;
    assert.equal((await onOrigin('tenant-a', '/.warren/anything')).status, 404);
    assert.equal(seen.a!.length, before);
  });

  test("a session for tenant A is refused on B's origin (404, as for a missing tenant)", async () => {
    const cookie = `__Host-warren_session=${await mintSession('tenant-a')}`;
    assert.equal((await onOrigin('tenant-a', '/', { headers: { cookie } })).body.who, 'a');
    const before = seen.b!.length;
    for (const method of ['GET', 'POST']) {
      const r = await onOrigin('tenant-b', '/secret', { method, headers: { cookie } });
      assert.equal(r.status, 404, r.text);
      assert.equal(r.body.error.code, 'NOT_FOUND');
    }
    const ws = await handshake(`${t.url}/ws`, { host: `tenant-b.${DOMAIN}:${new URL(t.url).port}`, cookie });
    assert.equal(ws.status, 404);
    assert.equal((await onOrigin('no-such-tenant', '/', { headers: { cookie } })).status, 404);
    // Names that are no tenant name: the domain itself, deeper names, ids.
    for (const label of ['', 'x.tenant-a', tenants['tenant-a']!.id]) {
      const r = await request0(label === '' ? DOMAIN : `${label}.${DOMAIN}`, cookie);
      assert.equal(r, 404, label);
    }
    assert.equal(seen.b!.length, before, "B's VM was reached");
  });

  test('two session cookies are refused, on the origin and in the path form', async () => {
    const a = tenants['tenant-a']!;
    // The visitor's session, and one a page planted on a deeper path (the browser sends the
    // deeper one first); the planter's session may even be valid.
    const victim = await mintSession('tenant-a');
    const planted = await mintSession('tenant-a');
    for (const name of ['warren_session', '__Host-warren_session']) {
      const cookie = `${name}=${planted}; theme=1; ${name}=${victim}`;
      const path = await fetch(dash('tenant-a', '/deeper/x'), { headers: { cookie } });
      assert.equal(path.status, name === 'warren_session' ? 401 : 400, `${name} in the path form`);
      const withBearer = await fetch(dash('tenant-a', '/deeper/x'), {
        headers: { ...bearer(a.key), cookie },
      });
      assert.equal(
        withBearer.status,
        name === 'warren_session' ? 200 : 400,
        `${name} in the path form, with a bearer token`,
      );
    }
    const cookie = `__Host-warren_session=${planted}; __Host-warren_session=${victim}`;
    const host = await onOrigin('tenant-a', '/deeper/x', { headers: { cookie } });
    assert.equal(host.status, 400, host.text);
    assert.equal(host.body.error.code, 'DUPLICATE_SESSION_COOKIE');
    const path = await fetch(dash('tenant-a', '/deeper/x'), { headers: { ...bearer(a.key), cookie } });
    assert.equal((await json(path)).error.code, 'DUPLICATE_SESSION_COOKIE');
    const ws = await handshake(`${t.url}/ws`, { host: `tenant-a.${DOMAIN}:${new URL(t.url).port}`, cookie });
    assert.equal(ws.status, 400);
    // Look-alikes a sibling origin can toss (no __Host- prefix) count for nothing: not a
    // second session, not forwarded.
    const tossed = await onOrigin('tenant-a', '/tossed', {
      headers: { cookie: `warren_session=x; __HOST-warren_session=y; __Host-warren_session=${victim}` },
    });
    assert.equal(tossed.status, 200, tossed.text);
    assert.equal(seen.a!.at(-1)!.headers.cookie, undefined);
  });

  test('the path form honours no session cookie; /v1 neither; no CORS on the API', async () => {
    const id = await mintSession('tenant-a');
    for (const cookie of [`warren_session=${id}`, `__Host-warren_session=${id}`]) {
      const path = await fetch(dash('tenant-a', '/'), { headers: { cookie } });
      assert.equal(path.status, 401, cookie.split('=')[0]);
      assert.equal((await json(path)).error.code, 'UNAUTHENTICATED');
      assert.equal((await handshake(dash('tenant-a', '/ws'), { cookie })).status, 401);
      const v1 = await fetch(`${t.url}/v1/tenants`, { headers: { cookie } });
      assert.equal(v1.status, 401);
    }
    // A page of a dashboard origin gets no CORS grant from the API.
    const origin = originOf('tenant-a');
    const pre = await fetch(`${t.url}/v1/tenants`, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'GET',
        'access-control-request-headers': 'authorization',
      },
    });
    assert.equal(pre.headers.get('access-control-allow-origin'), null);
    const get = await fetch(`${t.url}/v1/health`, { headers: { origin } });
    assert.equal(get.headers.get('access-control-allow-origin'), null);
    assert.equal(get.headers.get('access-control-allow-credentials'), null);
  });

  test('no path of a dashboard origin reaches the API; its routes answer only by that Host', async () => {
    const a = tenants['tenant-a']!;
    const s = await login(a.key);
    // `/v1/...` on the origin is the app's own path, even with a bearer token.
    const r = await onOrigin('tenant-a', '/v1/tenants', {
      headers: { cookie: s.cookie, ...bearer(t.adminToken) },
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.who, 'a');
    assert.equal(r.body.url, '/v1/tenants');
    // A bearer token alone does not open the origin: only its session does.
    assert.equal((await onOrigin('tenant-a', '/', { headers: bearer(a.key) })).status, 401);
    // The internal route, asked for on the API's host, does not exist.
    for (const headers of [{ cookie: s.cookie }, bearer(a.key)]) {
      const direct = await fetch(`${t.url}/.warren-dashboard-host/tenant-a/x`, { headers });
      assert.equal(direct.status, 404);
    }
    // An absolute-form target on a dashboard Host goes nowhere.
    const abs = await raw(
      `GET http://${cpHost}/v1/tenants HTTP/1.1\r\nHost: tenant-a.${DOMAIN}\r\nAuthorization: Bearer ${t.adminToken}\r\nCookie: ${s.cookie}\r\nConnection: close\r\n\r\n`,
    );
    assert.equal(abs.status, 404, abs.text);
  });

  test('cross-origin, cross-site and sibling requests with the cookie are refused, except top-level links', async () => {
    const s = await login(tenants['tenant-a']!.key);
    const before = seen.a!.length;
    const refused: Record<string, string>[] = [
      { origin: originOf('tenant-b') },
      { origin: 'null' },
      { 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty' },
      { 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'script' },
      { 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'iframe' },
      { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'image' },
    ];
    for (const h of refused) {
      const r = await onOrigin('tenant-a', '/x', { headers: { cookie: s.cookie, ...h } });
      assert.equal(r.status, 403, JSON.stringify(h));
      assert.equal(r.body.error.code, 'FORBIDDEN');
    }
    const post = await onOrigin('tenant-a', '/x', {
      method: 'POST',
      headers: {
        cookie: s.cookie,
        'sec-fetch-site': 'same-site',
        'sec-fetch-mode': 'navigate',
        'sec-fetch-dest': 'document',
      },
    });
    assert.equal(post.status, 403);
    assert.equal(seen.a!.length, before, 'a refused request reached the VM');
    const accepted: Record<string, string>[] = [
      { origin: originOf('tenant-a'), 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'cors' },
      { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' },
      { 'sec-fetch-site': 'none', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' },
    ];
    for (const h of accepted) {
      const r = await onOrigin('tenant-a', '/x', { headers: { cookie: s.cookie, ...h } });
      assert.equal(r.status, 200, JSON.stringify(h));
    }
  });

  test('the admin names the tenant of a session; an admin session opens only that dashboard', async () => {
    const unnamed = await login(t.adminToken);
    assert.equal(unnamed.status, 400);
    const s = await login(t.adminToken, { tenant: 'tenant-b' });
    assert.equal(s.status, 200);
    assert.equal(s.loginUrl!.hostname, `tenant-b.${DOMAIN}`);
    assert.equal((await onOrigin('tenant-b', '/', { headers: { cookie: s.cookie } })).status, 200);
    assert.equal((await onOrigin('tenant-a', '/', { headers: { cookie: s.cookie } })).status, 404);
    // A tenant key cannot open a session for another tenant.
    const probe = await call(t.url, 'POST', '/v1/sessions', {
      token: tenants['tenant-a']!.key,
      body: { tenant: 'tenant-b' },
    });
    assert.equal(probe.status, 404);
  });

  test('expired sessions and sessions of a revoked key are refused', async () => {
    const s = await login(tenants['tenant-b']!.key);
    assert.equal((await onOrigin('tenant-b', '/', { headers: { cookie: s.cookie } })).status, 200);
    // Time passing, without waiting 12 hours.
    await t.cp.store.db
      .updateTable('sessions')
      .set({ expires_at: new Date(Date.now() - 1000).toISOString() })
      .execute();
    assert.equal((await onOrigin('tenant-b', '/', { headers: { cookie: s.cookie } })).status, 401);

    const key = await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: 'tenant-b' } });
    const fresh = await login(key.body.token);
    assert.equal((await onOrigin('tenant-b', '/', { headers: { cookie: fresh.cookie } })).status, 200);
    const pending = await call(t.url, 'POST', '/v1/sessions', { token: key.body.token, body: {} });
    assert.equal(
      (await call(t.url, 'DELETE', `/v1/keys/${key.body.key.id}`, { token: t.adminToken })).status,
      204,
    );
    const revoked = await onOrigin('tenant-b', '/', { headers: { cookie: fresh.cookie } });
    assert.equal(revoked.status, 401);
    assert.equal(revoked.body.error.code, 'UNAUTHENTICATED');
    // Its unused login links died with it.
    const u = new URL(pending.body.loginUrl);
    assert.equal((await onOrigin('tenant-b', `${u.pathname}${u.search}`)).status, 401);
  });

  test('proxied requests are not audited', async () => {
    const before = await call(t.url, 'GET', '/v1/audit?limit=1000', { token: t.adminToken });
    for (let i = 0; i < 5; i++)
      await fetch(dash('tenant-a', '/'), { headers: bearer(tenants['tenant-a']!.key) });
    const afterAudit = await call(t.url, 'GET', '/v1/audit?limit=1000', { token: t.adminToken });
    assert.equal(afterAudit.body.events.length, before.body.events.length);
  });
});

/** `p`, or a failure naming `what` once `ms` have passed: a deadline, not a wait. */
function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still going after ${ms} ms`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

/** Reads a response body until it ends or breaks; resolves with how it stopped and when. */
async function drain(
  body: ReadableStream<Uint8Array>,
): Promise<{ how: 'end' | 'cut'; at: number; text: string }> {
  const reader = body.getReader();
  let text = '';
  try {
    for (let r = await reader.read(); !r.done; r = await reader.read())
      text += Buffer.from(r.value).toString();
    return { how: 'end', at: Date.now(), text };
  } catch {
    return { how: 'cut', at: Date.now(), text };
  }
}

describe('idle limits: a hostile VM that stalls is cut off (finding 8)', () => {
  test('control plane: an answer that stops mid-body ends after WARREN_DASHBOARD_RESPONSE_IDLE_MS', async () => {
    // The agent's own limit is minutes here; only the control plane's can end this.
    const started = Date.now();
    const res = await fetch(dash('tenant-a', '/stall'), { headers: bearer(tenants['tenant-a']!.key) });
    assert.equal(res.status, 200);
    const done = await within(RESPONSE_IDLE_MS + 8000, 'the stalled answer', drain(res.body!));
    assert.equal(done.text, 'first-chunk');
    assert.equal(done.how, 'cut');
    assert.ok(done.at - started >= RESPONSE_IDLE_MS - 100, `cut after ${done.at - started} ms`);
  });

  describe('host agent', () => {
    let strict: FastifyInstance;
    let base = '';
    const token = randomBytes(32).toString('base64url');
    before(async () => {
      // No VMs behind it: the proxy's target is a loopback server, and open requests count for nothing.
      strict = createRemoteApi({ vms: { idle: { hold: () => () => {} } } } as unknown as Host, {
        agentToken: token,
        onWake: () => {},
        resolveVmTarget: async () => ({ host: '127.0.0.2', port }),
        proxyIdle: { idleMs: AGENT_IDLE_MS, wsIdleMs: AGENT_IDLE_MS },
      });
      await strict.listen({ host: '127.0.0.1', port: 0 });
      base = `http://127.0.0.1:${(strict.server.address() as AddressInfo).port}/v1/vms/${vmIdOfTenant(tenants['tenant-a']!.id)}/proxy/${port}`;
    });
    after(async () => strict?.close());

    test('an answer that stops mid-body ends after WARREN_PROXY_IDLE_MS', async () => {
      const started = Date.now();
      const res = await fetch(`${base}/stall`, { headers: bearer(token) });
      assert.equal(res.status, 200);
      const done = await within(AGENT_IDLE_MS + 8000, 'the stalled answer', drain(res.body!));
      assert.equal(done.text, 'first-chunk');
      assert.equal(done.how, 'cut');
      assert.ok(done.at - started >= AGENT_IDLE_MS - 100, `cut after ${done.at - started} ms`);
    });

    test('a VM that never answers is DASHBOARD_UNAVAILABLE after WARREN_PROXY_IDLE_MS', async () => {
      const res = await within(
        AGENT_IDLE_MS + 8000,
        'the unanswered request',
        fetch(`${base}/hang`, { headers: bearer(token) }),
      );
      assert.equal(res.status, 503);
      const body = await json(res);
      assert.equal(body.error.code, 'DASHBOARD_UNAVAILABLE');
      assert.match(body.error.message, /WARREN_PROXY_IDLE_MS/);
    });

    test('an idle WebSocket is closed after WARREN_PROXY_WS_IDLE_MS', async () => {
      const started = Date.now();
      const ws = await handshake(`${base}/ws`, bearer(token));
      assert.equal(ws.status, 101);
      await within(
        AGENT_IDLE_MS + 8000,
        'the idle tunnel',
        new Promise((resolve) => ws.socket!.once('close', resolve).resume()),
      );
      assert.ok(Date.now() - started >= AGENT_IDLE_MS - 100);
    });
  });
});

describe('limits and failures', () => {
  test('a body over the limit is 413, declared or streamed; the VM never receives it whole', async () => {
    const key = tenants['tenant-a']!.key;
    const count = seen.a!.length;
    const declared = await fetch(dash('tenant-a', '/too-big'), {
      method: 'POST',
      headers: bearer(key),
      body: Buffer.alloc(BODY_LIMIT + 1),
    });
    assert.equal(declared.status, 413);
    assert.equal((await json(declared)).error.code, 'PAYLOAD_TOO_LARGE');
    // Chunked, no Content-Length: counted while it streams.
    const streamed = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(dash('tenant-a', '/too-big-streamed'), { method: 'POST', headers: bearer(key) });
      req.on('response', (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      req.on('error', reject);
      const chunk = Buffer.alloc(32 * 1024);
      let sent = 0;
      const pump = () => {
        while (sent <= BODY_LIMIT * 2) {
          sent += chunk.length;
          if (!req.write(chunk)) return void req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    assert.equal(streamed.status, 413);
    assert.equal(JSON.parse(streamed.body).error.code, 'PAYLOAD_TOO_LARGE');
    await sleep(100);
    assert.ok(
      seen.a!.slice(count).every((s) => s.bytes <= BODY_LIMIT),
      'an oversized body reached the VM whole',
    );
  });

  test('unreachable dashboards answer 503 DASHBOARD_UNAVAILABLE with a reason', async () => {
    const cases: [string, string, RegExp][] = [
      ['nothing-listens', '/', /connection refused/],
      ['no-network', '/', /has no network/],
      ['tenant-a', '/hang', /did not answer within 1500 ms/],
    ];
    for (const [name, path, why] of cases) {
      const res = await fetch(dash(name, path), { headers: bearer(t.adminToken) });
      const body = await json(res);
      assert.equal(res.status, 503, `${name}: ${JSON.stringify(body)}`);
      assert.equal(body.error.code, 'DASHBOARD_UNAVAILABLE');
      assert.match(body.error.message, why);
      assert.ok(body.error.fix.length > 20);
    }
    const ws = await handshake(dash('nothing-listens', '/ws'), bearer(t.adminToken));
    assert.equal(ws.status, 503);
  });

  test('a stopped tenant: 503 with a clear Warren error, over HTTP and WebSocket', async () => {
    const stop = await call(t.url, 'POST', '/v1/tenants/sleepy/stop', { token: t.adminToken });
    assert.equal(stop.status, 202);
    // One heartbeat brings the agent the new desired state, the next reports it reached.
    await agent.heartbeat();
    await agent.heartbeat();
    const res = await fetch(dash('sleepy', '/'), { headers: bearer(tenants.sleepy!.key) });
    const body = await json(res);
    assert.equal(res.status, 503);
    assert.equal(body.error.code, 'DASHBOARD_UNAVAILABLE');
    assert.match(body.error.message, /tenant sleepy is stopped/);
    assert.match(body.error.fix, /warren tenant start/);
    assert.equal((await handshake(dash('sleepy', '/ws'), bearer(tenants.sleepy!.key))).status, 503);
  });
});

describe('no open proxy', () => {
  test('nothing a client sends makes the chain connect anywhere but the VM', async () => {
    const key = tenants['tenant-a']!.key;
    const other = `127.0.0.3:${port}`;
    const paths = [
      `//${other}/x`,
      `/http://${other}/x`,
      `/\\\\${other}/x`,
      `/%2f%2f${other}/x`,
      `/@${other}/x`,
    ];
    for (const p of paths) {
      const res = await raw(
        `GET /t/tenant-a/dashboard${p} HTTP/1.1\r\nHost: ${other}\r\nAuthorization: Bearer ${key}\r\nConnection: close\r\n\r\n`,
      );
      assert.ok(res.status === 200, `${p}: ${res.text.slice(0, 200)}`);
    }
    // Absolute-form request target naming another host.
    await raw(
      `GET http://${other}/t/tenant-a/dashboard/ HTTP/1.1\r\nHost: ${other}\r\nAuthorization: Bearer ${key}\r\nConnection: close\r\n\r\n`,
    );
    // The port is the admin's setting; a tenant key cannot change it.
    const patch = await call(t.url, 'PATCH', '/v1/tenants/tenant-a', {
      token: key,
      body: { dashboardPort: 22 },
    });
    assert.equal(patch.status, 403);

    // Even the agent token (the control plane's) names only a tenant VM and a port.
    const direct = (path: string, headers: Record<string, string> = {}) =>
      fetch(`${agent.address}${path}`, { headers: { ...bearer(agent.agentToken), ...headers } });
    const vm = vmIdOfTenant(tenants['tenant-a']!.id);
    for (const bad of [
      `/v1/vms/${vm}/proxy/${port}@127.0.0.3/`,
      `/v1/vms/${vm}/proxy/127.0.0.3:${port}/`,
      `/v1/vms/${vm}/proxy/0/`,
      `/v1/vms/${vm}/proxy/65536/`,
      `/v1/vms/${vm}/proxy/-1/`,
      `/v1/vms/${vm}/proxy/0x1f90/`,
      `/v1/vms/keep-1/proxy/${port}/`,
      `/v1/vms/ten-${'0'.repeat(16)}/proxy/${port}/`,
    ]) {
      const res = await direct(bad);
      assert.ok([400, 404].includes(res.status), `${bad}: ${res.status}`);
      assert.ok((await json(res)).error.code);
    }
    const withHost = await direct(`/v1/vms/${vm}/proxy/${port}/via-agent`, { host: other });
    assert.equal(withHost.status, 200);
    assert.equal((await json(withHost)).who, 'a');
    assert.equal((await fetch(`${agent.address}/v1/vms/${vm}/proxy/${port}/`)).status, 401);
    assert.equal((await handshake(`${agent.address}/v1/vms/${vm}/proxy/${port}/ws`, {})).status, 401);
    const viaAgent = await handshake(
      `${agent.address}/v1/vms/${vm}/proxy/${port}/ws`,
      bearer(agent.agentToken),
    );
    assert.equal(viaAgent.status, 101);
    viaAgent.socket!.destroy();

    assert.deepEqual(seen['decoy-loopback'], [], 'reached 127.0.0.1');
    assert.deepEqual(seen['decoy-other'], [], 'reached 127.0.0.3');
    assert.deepEqual(upgrades['decoy-other'], []);
    // Every proxied request of this test landed on tenant A's VM, on a path of its own.
    assert.ok(seen.a!.some((s) => s.url === `//${other}/x`));
    assert.ok(seen.a!.some((s) => s.url === `/http://127.0.0.3:${port}/x`));
  });
});

/* ----------------------------------------------------------------- authorization matrix */

const HOST_PREFIX = '/.warren-dashboard-host/:tenant';

function concrete(route: RegisteredRoute, ref: string): string {
  return route.url.replace(':tenant', ref).replace('*', 'matrix');
}

const bodyFor = (route: RegisteredRoute) => (route.method === 'GET' ? {} : { body: 'payload' });

describe('authorization matrix over every dashboard route', () => {
  test('who gets what, on every registered dashboard route and method', async () => {
    const routes = t.cp.dashboardRoutes;
    assert.ok(routes.length >= 20, `only ${routes.length} dashboard routes`);
    const a = tenants['tenant-a']!;
    const b = tenants['tenant-b']!;
    const ok = (s: number) => s >= 200 && s < 400;
    let checked = 0;
    for (const r of routes) {
      if (r.url.startsWith('/t/')) {
        // The path form: bearer tokens only.
        assert.equal(r.auth, 'tenant', r.url);
        const session = await login(a.key);
        const go = (ref: string, headers: Record<string, string>) =>
          fetch(`${t.url}${concrete(r, ref)}`, {
            method: r.method,
            headers,
            redirect: 'manual',
            ...bodyFor(r),
          });
        const anonymous: Record<string, string>[] = [
          {},
          bearer('garbage'),
          bearer(`wrn_key_${'A'.repeat(43)}`),
          { cookie: 'warren_session=x' },
          { cookie: session.cookie },
        ];
        for (const headers of anonymous) {
          const res = await go('tenant-a', headers);
          assert.equal(res.status, 401, `${r.method} ${r.url} ${JSON.stringify(headers)}`);
          assert.equal((await json(res)).error.code, 'UNAUTHENTICATED');
        }
        for (const token of [agent.hostToken, t.joinToken]) {
          assert.equal((await go('tenant-a', bearer(token))).status, 403, `${r.method} ${r.url}`);
        }
        for (const ref of ['tenant-b', b.id]) {
          const res = await go(ref, bearer(a.key));
          assert.equal(res.status, 404, `${r.method} ${r.url} on B`);
          assert.equal((await json(res)).error.code, 'NOT_FOUND');
        }
        for (const headers of [bearer(a.key), bearer(t.adminToken)]) {
          const res = await go('tenant-a', headers);
          assert.ok(ok(res.status), `${r.method} ${r.url}: ${res.status}`);
          await res.arrayBuffer();
        }
      } else {
        // The dashboard origins: the session cookie of that origin only.
        assert.ok(r.url.startsWith(HOST_PREFIX), r.url);
        const path = r.url.slice(HOST_PREFIX.length).replace('*', 'matrix');
        const go = (tenant: string, headers: Record<string, string>) =>
          onOrigin(tenant, path, {
            method: r.method,
            headers,
            ...(r.method === 'GET' ? {} : { body: 'payload' }),
          });
        if (r.auth === 'public') {
          // The login link and the reserved paths: nothing without a valid code, whatever else.
          for (const headers of [{}, bearer(t.adminToken)]) {
            const res = await go('tenant-a', headers);
            assert.ok([401, 404].includes(res.status), `${r.method} ${r.url}: ${res.status}`);
            assert.equal(res.headers['set-cookie'], undefined);
          }
          checked++;
          continue;
        }
        assert.equal(r.auth, 'session', r.url);
        const anonymous: Record<string, string>[] = [
          {},
          bearer(a.key),
          bearer(t.adminToken),
          { cookie: 'warren_session=x' },
          { cookie: `__Host-warren_session=${'A'.repeat(43)}` },
        ];
        for (const headers of anonymous) {
          const res = await go('tenant-a', headers);
          assert.equal(res.status, 401, `${r.method} ${r.url} ${JSON.stringify(headers)}`);
          assert.equal(res.body.error.code, 'UNAUTHENTICATED');
        }
        // Each check spends a fresh session: log-out ends the one it is given.
        const fresh = async () => (await login(a.key)).cookie;
        const onB = await go('tenant-b', { cookie: await fresh() });
        assert.equal(onB.status, 404, `${r.method} ${r.url} on B`);
        const admin = (await login(t.adminToken, { tenant: 'tenant-a' })).cookie;
        for (const cookie of [await fresh(), admin]) {
          const res = await go('tenant-a', { cookie });
          assert.ok(ok(res.status), `${r.method} ${r.url}: ${res.status} ${res.text}`);
        }
      }
      checked++;
    }
    assert.equal(checked, routes.length);
    assert.deepEqual(seen['decoy-loopback'], []);
  });
});
