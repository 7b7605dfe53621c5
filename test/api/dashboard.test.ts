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
import { createServer, type IncomingMessage, request, type Server } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RegisteredRoute } from '@warren/control-plane';
import { createRemoteApi, type Host } from '@warren/host-agent';
import { vmIdOfTenant, WarrenError } from '@warren/protocol';
import type { FastifyInstance } from 'fastify';
import { call, FAKE_IMAGE, FakeAgent, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { serveWebSocketEcho, wsAccept } from '../helpers/ws-echo.ts';

const BODY_LIMIT = 256 * 1024;
const TIMEOUT_MS = 1500;
const WS_IDLE_MS = 1500;

/* ------------------------------------------------------------------ the VM's dashboard */

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  bytes: number;
  sha256: string;
}

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
        res.setHeader('set-cookie', [
          'app=1; Path=/',
          'warren_session=chosen-by-the-tenant; Path=/; HttpOnly',
          'other=2; Path=/',
        ]);
        res.setHeader('x-warren-upstream', 'forged');
        res.setHeader('service-worker-allowed', '/');
        res.end('cookies');
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
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${wsAccept(String(req.headers['sec-websocket-key']))}\r\n\r\n`,
    );
    serveWebSocketEcho(socket, head);
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

/* --------------------------------------------------------- the host agent (real remote API) */

/**
 * The host agent's real remote API with the control-plane side of an agent (join, heartbeat,
 * "converged at once" like FakeAgent); its VmManager is a stand-in that only answers `get`
 * with a state and a guest IP, which is all the dashboard proxy asks of it.
 */
class ProxyAgent {
  readonly agentToken = randomBytes(32).toString('base64url');
  api!: FastifyInstance;
  address = '';
  /** Joins and heartbeats on behalf of `api`. */
  readonly host = new FakeAgent('proxy-host', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 });
  /** Tenant name → the VM's guest IP (undefined: the VM has no network). */
  readonly guestIps = new Map<string, string | undefined>();
  readonly asked: string[] = [];

  get hostToken(): string {
    return this.host.token;
  }

  async start(cpUrl: string, joinToken: string): Promise<this> {
    const vms = {
      get: async (id: string) => {
        this.asked.push(id);
        const d = this.host.desired.find((x) => x.vmId === id);
        if (!d) throw new WarrenError('VM_NOT_FOUND', `no VM ${id} on this host`);
        const ip = this.guestIps.get(d.name);
        return {
          id,
          state: d.desiredState === 'running' ? 'running' : 'stopped',
          ...(ip ? { network: { guestIp: ip } } : {}),
        };
      },
    };
    this.api = createRemoteApi({ vms } as unknown as Host, { agentToken: this.agentToken, onWake: () => {} });
    await this.api.listen({ host: '127.0.0.1', port: 0 });
    this.address = `http://127.0.0.1:${(this.api.server.address() as AddressInfo).port}`;
    await this.host.start(cpUrl, joinToken, 1000, { address: this.address, agentToken: this.agentToken });
    return this;
  }

  heartbeat(): Promise<unknown> {
    return this.host.heartbeat();
  }

  async stop(): Promise<void> {
    await this.host.stop();
    await this.api?.close();
  }
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
  });
  cpHost = new URL(t.url).host;
  agent = await new ProxyAgent().start(t.url, t.joinToken);
  agent.guestIps.set('tenant-a', '127.0.0.2');
  agent.guestIps.set('tenant-b', '127.0.0.4');
  agent.guestIps.set('no-network', undefined);
  agent.guestIps.set('nothing-listens', '127.0.0.5');
  agent.guestIps.set('sleepy', '127.0.0.2');
  for (const name of ['tenant-a', 'tenant-b', 'no-network', 'nothing-listens', 'sleepy']) {
    const created = await call(t.url, 'POST', '/v1/tenants', {
      token: t.adminToken,
      body: { name, image: FAKE_IMAGE, dashboardPort: port },
    });
    assert.equal(created.status, 202, created.text);
    const key = await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: name } });
    tenants[name] = { id: created.body.tenant.id, key: key.body.token, keyId: key.body.key.id };
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

async function login(
  token: string,
  body: unknown = {},
): Promise<{ status: number; cookie: string; setCookie: string; body: any }> {
  const res = await fetch(`${t.url}/v1/sessions`, {
    method: 'POST',
    headers: { ...bearer(token), 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const setCookie = res.headers.get('set-cookie') ?? '';
  return { status: res.status, setCookie, cookie: setCookie.split(';')[0]!, body: await json(res) };
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

  test("the VM's answer passes as it is, but never sets the platform's cookie or claims the origin", async () => {
    const key = bearer(tenants['tenant-a']!.key);
    const teapot = await fetch(dash('tenant-a', '/teapot'), { headers: key });
    assert.equal(teapot.status, 418);
    assert.equal(teapot.headers.get('x-app'), 'yes');
    assert.equal(await teapot.text(), "I'm a teapot");
    const cookies = await fetch(dash('tenant-a', '/cookies'), { headers: key });
    assert.equal(cookies.status, 200);
    assert.deepEqual(cookies.headers.getSetCookie(), ['app=1; Path=/', 'other=2; Path=/']);
    assert.equal(cookies.headers.get('x-warren-upstream'), null);
    // A dashboard's service worker may not claim the whole origin (other dashboards, the API).
    assert.equal(cookies.headers.get('service-worker-allowed'), null);
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
    for (const auth of [{ authorization: `Bearer ${a.key}` }, {}]) {
      const res = await fetch(dash('tenant-a', '/headers'), {
        headers: {
          ...auth,
          cookie: `theme=dark; ${session.cookie}; lang=en`,
          'x-forwarded-for': '6.6.6.6',
          'x-forwarded-host': 'evil.example',
          'x-forwarded-proto': 'https',
          'x-forwarded-prefix': '/evil',
          'x-forwarded-port': '1',
          forwarded: 'for=6.6.6.6;host=evil.example',
          'x-real-ip': '6.6.6.6',
          'x-warren-upstream': '1',
        },
      });
      assert.equal(res.status, 200);
      const h = seen.a!.at(-1)!.headers;
      assert.equal(h.authorization, undefined);
      assert.equal(h.cookie, 'theme=dark; lang=en');
      assert.equal(h['x-forwarded-for'], '127.0.0.1');
      assert.equal(h['x-forwarded-proto'], 'http');
      assert.equal(h['x-forwarded-host'], cpHost);
      assert.equal(h['x-forwarded-prefix'], '/t/tenant-a/dashboard');
      for (const gone of ['x-forwarded-port', 'forwarded', 'x-real-ip', 'x-warren-upstream']) {
        assert.equal(h[gone], undefined, gone);
      }
      // The host header is the VM's own address, not whatever the client named.
      assert.equal(h.host, `127.0.0.2:${port}`);
      const all = JSON.stringify(h);
      for (const secret of [a.key, t.adminToken, agent.agentToken, session.cookie.split('=')[1]!]) {
        assert.ok(!all.includes(secret), 'a platform credential reached the VM');
      }
    }
    // Only the session cookie: the VM gets no Cookie header at all.
    await fetch(dash('tenant-a', '/only-session'), { headers: { cookie: session.cookie } });
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

  test('with a session cookie; refused without credentials (401) and for another tenant (404)', async () => {
    const session = await login(tenants['tenant-a']!.key);
    const ws = await openWs(dash('tenant-a', '/ws').replace('http', 'ws'), { cookie: session.cookie });
    assert.equal(await echo(ws, 'cookie'), 'cookie');
    ws.close();
    assert.equal(upgrades.a!.at(-1)!.cookie, undefined);

    const none = await handshake(dash('tenant-a', '/ws'), {});
    assert.equal(none.status, 401);
    assert.equal(JSON.parse(none.body).error.code, 'UNAUTHENTICATED');
    const other = await handshake(dash('tenant-a', '/ws'), bearer(tenants['tenant-b']!.key));
    assert.equal(other.status, 404);
    assert.equal(JSON.parse(other.body).error.code, 'NOT_FOUND');
    // A page of another origin (another subdomain is still "same site") cannot use the cookie.
    const crossOrigin = await handshake(dash('tenant-a', '/ws'), {
      cookie: session.cookie,
      origin: 'https://evil.example',
    });
    assert.equal(crossOrigin.status, 403);
    const sameOrigin = await handshake(dash('tenant-a', '/ws'), { cookie: session.cookie, origin: t.url });
    assert.equal(sameOrigin.status, 101);
    sameOrigin.socket!.destroy();
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

  test('session: log in, use, log out; the cookie is HttpOnly, Secure, SameSite=Strict, and useless for /v1', async () => {
    const a = tenants['tenant-a']!;
    const s = await login(a.key);
    assert.equal(s.status, 201, JSON.stringify(s.body));
    assert.match(s.setCookie, /^warren_session=[A-Za-z0-9_-]{43}; /);
    for (const attr of ['HttpOnly', 'Secure', 'SameSite=Strict', 'Path=/', 'Max-Age=43200']) {
      assert.ok(s.setCookie.split('; ').includes(attr), `${attr} in ${s.setCookie}`);
    }
    assert.equal(s.body.tenantName, 'tenant-a');
    assert.equal(s.body.dashboardPath, '/t/tenant-a/dashboard/');
    // Only the hash is stored.
    const stored = await t.cp.store.db.selectFrom('sessions').selectAll().execute();
    assert.ok(!JSON.stringify(stored).includes(s.cookie.split('=')[1]!));

    const use = await fetch(dash('tenant-a', '/with-cookie'), { headers: { cookie: `x=1; ${s.cookie}` } });
    assert.equal(use.status, 200);
    assert.equal((await fetch(dash('tenant-b', '/'), { headers: { cookie: s.cookie } })).status, 404);
    // The /v1 API never acts on a cookie: a dashboard's script cannot drive it.
    assert.equal((await fetch(`${t.url}/v1/tenants`, { headers: { cookie: s.cookie } })).status, 401);

    const out = await fetch(`${t.url}/v1/sessions/current`, {
      method: 'DELETE',
      headers: { cookie: s.cookie },
    });
    assert.equal(out.status, 204);
    assert.match(out.headers.get('set-cookie') ?? '', /^warren_session=; .*Max-Age=0/);
    const after = await fetch(dash('tenant-a', '/'), { headers: { cookie: s.cookie } });
    assert.equal(after.status, 401);

    const audit = await call(t.url, 'GET', '/v1/audit?action=session.create', { token: t.adminToken });
    assert.ok(audit.body.events.some((e: { actor: string }) => e.actor === `key:${a.keyId}`));
  });

  test('the admin names the tenant of a session; an admin session opens only that dashboard', async () => {
    const unnamed = await login(t.adminToken);
    assert.equal(unnamed.status, 400);
    assert.equal(unnamed.setCookie, '');
    const s = await login(t.adminToken, { tenant: 'tenant-b' });
    assert.equal(s.status, 201);
    assert.equal((await fetch(dash('tenant-b', '/'), { headers: { cookie: s.cookie } })).status, 200);
    assert.equal((await fetch(dash('tenant-a', '/'), { headers: { cookie: s.cookie } })).status, 404);
    // A tenant key cannot open a session for another tenant.
    const probe = await login(tenants['tenant-a']!.key, { tenant: 'tenant-b' });
    assert.equal(probe.status, 404);
  });

  test('expired sessions and sessions of a revoked key are refused', async () => {
    const s = await login(tenants['tenant-b']!.key);
    assert.equal((await fetch(dash('tenant-b', '/'), { headers: { cookie: s.cookie } })).status, 200);
    // Time passing, without waiting 12 hours.
    await t.cp.store.db
      .updateTable('sessions')
      .set({ expires_at: new Date(Date.now() - 1000).toISOString() })
      .execute();
    assert.equal((await fetch(dash('tenant-b', '/'), { headers: { cookie: s.cookie } })).status, 401);

    const key = await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: 'tenant-b' } });
    const fresh = await login(key.body.token);
    assert.equal((await fetch(dash('tenant-b', '/'), { headers: { cookie: fresh.cookie } })).status, 200);
    assert.equal(
      (await call(t.url, 'DELETE', `/v1/keys/${key.body.key.id}`, { token: t.adminToken })).status,
      204,
    );
    const revoked = await fetch(dash('tenant-b', '/'), { headers: { cookie: fresh.cookie } });
    assert.equal(revoked.status, 401);
    assert.equal((await json(revoked)).error.code, 'UNAUTHENTICATED');
  });

  test('proxied requests are not audited', async () => {
    const before = await call(t.url, 'GET', '/v1/audit?limit=1000', { token: t.adminToken });
    for (let i = 0; i < 5; i++)
      await fetch(dash('tenant-a', '/'), { headers: bearer(tenants['tenant-a']!.key) });
    const afterAudit = await call(t.url, 'GET', '/v1/audit?limit=1000', { token: t.adminToken });
    assert.equal(afterAudit.body.events.length, before.body.events.length);
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

function concrete(route: RegisteredRoute, ref: string): string {
  return route.url.replace(':tenant', ref).replace('*', 'matrix');
}

const bodyFor = (route: RegisteredRoute) => (route.method === 'GET' ? {} : { body: 'payload' });

describe('authorization matrix over every dashboard route', () => {
  test('who gets what, on every registered dashboard route and method', async () => {
    const routes = t.cp.dashboardRoutes;
    assert.ok(routes.length >= 7, `only ${routes.length} dashboard routes`);
    const a = tenants['tenant-a']!;
    const b = tenants['tenant-b']!;
    const session = await login(a.key);
    const ok = (s: number) => s >= 200 && s < 400;
    let checked = 0;
    for (const r of routes) {
      assert.equal(r.auth, 'tenant', r.url);
      assert.ok(r.session, r.url);
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
        for (const headers of [bearer(a.key), { cookie: session.cookie }]) {
          const res = await go(ref, headers);
          assert.equal(res.status, 404, `${r.method} ${r.url} on B`);
          assert.equal((await json(res)).error.code, 'NOT_FOUND');
        }
      }
      for (const headers of [bearer(a.key), { cookie: session.cookie }, bearer(t.adminToken)]) {
        const res = await go('tenant-a', headers);
        assert.ok(ok(res.status), `${r.method} ${r.url}: ${res.status}`);
        await res.arrayBuffer();
      }
      checked++;
    }
    assert.equal(checked, routes.length);
    assert.deepEqual(seen['decoy-loopback'], []);
  });
});
