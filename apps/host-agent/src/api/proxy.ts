/**
 * The host agent's half of the dashboard proxy: `/v1/vms/:id/proxy/:port/*` on the remote API
 * forwards HTTP and WebSocket to one port of a tenant VM. The control plane names the VM and
 * the port, never an address: the address is the VM's own (`ResolveVmTarget`), so the agent
 * token cannot turn this route into a proxy to the host, the internal network or anywhere else.
 */

import { Agent, type IncomingMessage, request, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { endToEndHeaders, PROXY_UPSTREAM_HEADER, tenantIdOfVm, WarrenError } from '@warren/protocol';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

export interface VmTarget {
  host: string;
  port: number;
}

/**
 * Where the proxy connects for port `port` of tenant VM `vmId`. The one seam between the proxy
 * and the VM's network: production reads the VM's guest IP (`guestIpTarget`), tests point it
 * at a server on loopback.
 */
export type ResolveVmTarget = (vmId: string, port: number) => Promise<VmTarget>;

/** What `guestIpTarget` needs of a VM's status: `network.guestIp` is set once the VM has a NIC. */
interface VmWithNetwork {
  state: string;
  network?: { guestIp?: string } | undefined;
}

/** The production target: the guest IP of the VM's own TAP link, and nothing else. */
export function guestIpTarget(vms: {
  get(id: string): Promise<VmWithNetwork>;
  touch(id: string): void;
  /** Wakes the VM if it is suspended (idle reclamation); the request waits for it. */
  awake?(id: string): Promise<void>;
}): ResolveVmTarget {
  return async (vmId, port) => {
    // Dashboard traffic is use: a session's clean snapshot is no longer what the VM is.
    vms.touch(vmId);
    await vms.awake?.(vmId);
    const vm = await vms.get(vmId);
    if (vm.state !== 'running') throw new WarrenError('VM_NOT_RUNNING', `VM ${vmId} is ${vm.state}`);
    const ip = vm.network?.guestIp;
    if (!ip || isIP(ip) === 0) {
      throw new WarrenError(
        'DASHBOARD_UNAVAILABLE',
        `VM ${vmId} has no network, so its dashboard cannot be reached (is tenant networking on, WARREN_NETWORK?)`,
      );
    }
    return { host: ip, port };
  };
}

function toObject(pairs: [string, string][]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of pairs) {
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}

const pendingUpgrades = new WeakMap<IncomingMessage, { socket: Socket; head: Buffer }>();

/**
 * WebSocket handshakes go through the ordinary router, so the agent-token check (an
 * onRequest hook) and the error format apply to them as to any request. A route that does
 * not take the socket answers normally, and the connection ends after that answer.
 */
function routeUpgrades(app: FastifyInstance): void {
  // Only WebSocket handshakes take the upgrade path; any other Upgrade header (h2c from curl
  // --http2, say) stays an ordinary request with its body. The property is Node's (24.9+).
  (app.server as { shouldUpgradeCallback?: (req: IncomingMessage) => boolean }).shouldUpgradeCallback =
    isWebSocketHandshake;
  app.server.on('upgrade', (req: IncomingMessage, duplex: Duplex, head: Buffer) => {
    const socket = duplex as Socket;
    socket.on('error', () => socket.destroy());
    pendingUpgrades.set(req, { socket, head });
    const res = new ServerResponse(req);
    res.assignSocket(socket);
    res.shouldKeepAlive = false;
    res.on('finish', () => socket.end());
    app.routing(req, res);
  });
}

function takeUpgrade(req: IncomingMessage): { socket: Socket; head: Buffer } | undefined {
  const u = pendingUpgrades.get(req);
  pendingUpgrades.delete(req);
  if (!u || !isWebSocketHandshake(req)) return undefined;
  return u;
}

const PORT = /^[1-9][0-9]{0,4}$/;

export interface ProxyIdle {
  /** Nothing from the VM for this long, before its answer or within its body: the exchange ends. */
  idleMs: number;
  /** A WebSocket without a byte either way for this long is closed. */
  wsIdleMs: number;
}

/** Bytes through the proxy (metrics): `in` toward VMs, `out` from them; WebSocket tunnels included. */
export type OnProxyBytes = (direction: 'in' | 'out', n: number) => void;

export function registerProxyRoutes(
  app: FastifyInstance,
  resolve: ResolveVmTarget,
  idle: ProxyIdle,
  onBytes: OnProxyBytes = () => {},
): void {
  // Keep-alive to each VM port: a dashboard page is dozens of requests.
  const pool = new Agent({ keepAlive: true });
  const live = new Set<{ destroy(): unknown }>();
  routeUpgrades(app);
  app.addHook('preClose', async () => {
    for (const s of [...live]) s.destroy();
    pool.destroy();
  });
  app.register(async (scope) => {
    // Bodies belong to the tenant's app: not parsed, not limited here (the control plane
    // limits them), streamed through.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, _payload, done) => done(null));
    scope.route<{ Params: { id: string; port: string } }>({
      method: ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'],
      url: '/v1/vms/:id/proxy/:port/*',
      handler: (req, reply) => proxy(req, reply, resolve, pool, live, idle, onBytes),
    });
  });
}

async function proxy(
  req: FastifyRequest<{ Params: { id: string; port: string } }>,
  reply: FastifyReply,
  resolve: ResolveVmTarget,
  pool: Agent,
  live: Set<{ destroy(): unknown }>,
  idle: ProxyIdle,
  onBytes: OnProxyBytes,
): Promise<unknown> {
  const upgrade = takeUpgrade(req.raw);
  const { id, port: portText } = req.params;
  if (!tenantIdOfVm(id)) throw new WarrenError('VM_NOT_FOUND', `no tenant VM ${id} on this host`);
  const port = Number(portText);
  if (!PORT.test(portText) || port > 65535) {
    throw new WarrenError('INVALID_ARGUMENT', `port: ${portText.slice(0, 20)} is not a port number 1-65535`);
  }
  const target = await resolve(id, port);
  const path = pathOf(req.raw.url ?? '');
  const headers = endToEndHeaders(req.raw.rawHeaders).filter(
    // The agent token is for this hop only; the control plane already removed the client's
    // credentials and set the X-Forwarded-* headers.
    ([name]) =>
      name !== 'host' && name !== 'authorization' && name !== 'expect' && !name.startsWith('x-warren-'),
  );
  if (upgrade) headers.push(['connection', 'Upgrade'], ['upgrade', req.headers.upgrade ?? 'websocket']);
  const up = request({
    host: target.host,
    port: target.port,
    method: req.raw.method ?? 'GET',
    path,
    headers: toObject(headers),
    ...(upgrade ? {} : { agent: pool }),
  });
  let answered = false;
  // From the request on: a VM that accepts and never answers, or stalls in the middle of its
  // body, is cut off. Each byte from the VM (and each drain of a slow client) restarts it.
  const stalled = setTimeout(() => {
    if (!answered) {
      up.destroy(
        new WarrenError(
          'DASHBOARD_UNAVAILABLE',
          `VM ${id} sent nothing on port ${port} for ${idle.idleMs} ms (WARREN_PROXY_IDLE_MS)`,
        ),
      );
      return;
    }
    // Mid-body there is no way to say why: the client sees the connection end early.
    up.destroy();
    reply.raw.destroy();
  }, idle.idleMs);
  const vmRes = await new Promise<
    | { kind: 'response'; res: IncomingMessage }
    | { kind: 'upgrade'; res: IncomingMessage; socket: Socket; head: Buffer }
  >((ok, fail) => {
    up.on('response', (res) => {
      answered = true;
      ok({ kind: 'response', res });
    });
    up.on('upgrade', (res, socket, head) => {
      answered = true;
      ok({ kind: 'upgrade', res, socket, head });
    });
    up.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(stalled);
      fail(e instanceof WarrenError ? e : unreachable(id, port, e));
    });
    // The control plane going away (its timeout, its client leaving) ends the attempt.
    (upgrade?.socket ?? reply.raw).once('close', () => {
      if (!answered) up.destroy();
    });
    if (upgrade) up.end();
    else {
      req.raw.on('data', (b: Buffer) => onBytes('in', b.length));
      req.raw.pipe(up);
    }
  });
  // Marked as the VM's, whatever its status: the control plane passes it through as it is.
  const out = endToEndHeaders(vmRes.res.rawHeaders).filter(([name]) => name !== PROXY_UPSTREAM_HEADER);
  out.push([PROXY_UPSTREAM_HEADER, '1']);
  reply.hijack();
  if (vmRes.kind === 'upgrade') {
    clearTimeout(stalled);
    const client = upgrade?.socket;
    if (!client) {
      vmRes.socket.destroy();
      reply.raw.destroy();
      return;
    }
    out.unshift(['connection', 'Upgrade'], ['upgrade', vmRes.res.headers.upgrade ?? 'websocket']);
    const lines = ['HTTP/1.1 101 Switching Protocols', ...out.map(([k, v]) => `${k}: ${v}`)];
    client.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (vmRes.head.length > 0) client.write(vmRes.head);
    if (upgrade.head.length > 0) vmRes.socket.write(upgrade.head);
    const entry = {
      destroy: () => {
        client.destroy();
        vmRes.socket.destroy();
        live.delete(entry);
      },
    };
    live.add(entry);
    for (const s of [client, vmRes.socket]) {
      s.setNoDelay(true);
      s.setTimeout(idle.wsIdleMs, entry.destroy);
      s.on('error', entry.destroy);
      s.on('close', entry.destroy);
    }
    // Raw bytes both ways: frames are the VM's and the browser's business.
    client.on('data', (b: Buffer) => onBytes('in', b.length));
    vmRes.socket.on('data', (b: Buffer) => onBytes('out', b.length));
    vmRes.socket.pipe(client);
    client.pipe(vmRes.socket);
    return;
  }
  const res = vmRes.res;
  reply.raw.writeHead(res.statusCode ?? 502, toObject(out));
  live.add(reply.raw);
  reply.raw.once('close', () => {
    clearTimeout(stalled);
    live.delete(reply.raw);
    if (!res.complete) res.destroy();
  });
  res.on('data', (b: Buffer) => {
    stalled.refresh();
    onBytes('out', b.length);
  });
  reply.raw.on('drain', () => stalled.refresh());
  res.on('end', () => clearTimeout(stalled));
  res.on('error', () => reply.raw.destroy());
  res.pipe(reply.raw);
  return;
}

/** What follows `/v1/vms/<id>/proxy/<port>`, as an origin-form path (never a host). */
function pathOf(rawUrl: string): string {
  const m = /^\/v1\/vms\/[^/?]+\/proxy\/[^/?]+(\/[^?]*)(\?.*)?$/s.exec(rawUrl);
  if (!m) throw new WarrenError('INVALID_ARGUMENT', 'a proxy path is /v1/vms/<id>/proxy/<port>/...');
  const url = new URL(`http://vm.invalid${m[1]}${m[2] ?? ''}`);
  return `${url.pathname}${url.search}`;
}

function unreachable(id: string, port: number, e: NodeJS.ErrnoException): WarrenError {
  const why =
    e.code === 'ECONNREFUSED'
      ? `nothing listens on port ${port} of VM ${id} (connection refused)`
      : e.code === 'ECONNRESET'
        ? `port ${port} of VM ${id} closed the connection without answering`
        : e.code === 'ETIMEDOUT' || e.code === 'EHOSTUNREACH' || e.code === 'ENETUNREACH'
          ? `VM ${id} does not answer on port ${port} (${e.code})`
          : `cannot reach port ${port} of VM ${id}: ${e.message}`;
  return new WarrenError('DASHBOARD_UNAVAILABLE', why, { cause: e });
}

function isWebSocketHandshake(req: IncomingMessage): boolean {
  return req.method === 'GET' && /^websocket$/i.test(req.headers.upgrade ?? '');
}
