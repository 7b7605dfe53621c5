import { pipeline } from 'node:stream/promises';
import type { TLSSocket } from 'node:tls';
import {
  dashboardPrefix,
  endToEndHeaders,
  PROXY_UPSTREAM_HEADER,
  SESSION_COOKIE,
  vmIdOfTenant,
  vmProxyPath,
  WarrenError,
} from '@warren/protocol';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { DashboardProxy, toHeaderObject } from '../../agents/dashboard-proxy.ts';
import { withoutSessionCookie } from '../../auth/sessions.ts';
import type { HostsTable, TenantsTable } from '../../store/database.ts';
import type { Api } from '../context.ts';
import { takeUpgrade } from '../upgrade.ts';

/** Every method a dashboard may use; HEAD comes with GET. */
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/**
 * `/t/:tenant/dashboard/*`: forwards HTTP and WebSocket to the tenant's dashboard port, through
 * the tenant's host agent (the control plane may run on another machine, and only the agent
 * can reach the VM). Declared with `route()` like every other route, so authentication (bearer
 * token or session cookie), the tenant scope check (another tenant's dashboard is NOT_FOUND)
 * and the error format are the same; WebSocket handshakes go through the same handlers
 * (`routeUpgrades`). Proxied requests are not audited: a dashboard makes far too many.
 *
 * Registered on a Fastify scope without body parsers, so bodies stream through untouched.
 */
export function dashboardRoutes(api: Api, proxy: DashboardProxy): void {
  for (const method of METHODS) {
    api.route(
      {
        method,
        url: '/t/:tenant/dashboard/*',
        auth: 'tenant',
        session: true,
        summary: `Tenant dashboard (${method}${method === 'GET' ? ', HEAD and WebSocket' : ''}): forwarded to the dashboard port of the tenant's VM`,
        response: { status: 200, contentType: '*/*' },
      },
      ({ req, reply, tenant, params }) => forward(api, proxy, req, reply, tenant!, params.tenant!),
    );
  }
  api.route(
    {
      method: 'GET',
      url: '/t/:tenant/dashboard',
      auth: 'tenant',
      session: true,
      summary: "Redirects to the dashboard's root with a trailing slash, so relative links resolve under it",
      response: { status: 308 },
    },
    async ({ req, reply }) => {
      const [path, query] = splitUrl(req.raw.url ?? '');
      return reply.redirect(`${path}/${query}`, 308);
    },
  );
}

async function forward(
  api: Api,
  proxy: DashboardProxy,
  req: FastifyRequest,
  reply: FastifyReply,
  tenant: TenantsTable,
  ref: string,
): Promise<unknown> {
  const upgrade = takeUpgrade(req.raw);
  const host = await hostOf(api, tenant);
  const length = Number(req.headers['content-length'] ?? 0);
  if (length > api.config.dashboardBodyLimitBytes) {
    // Refused before reading it; closing the connection spares reading a body nobody wants.
    reply.header('connection', 'close');
    throw new WarrenError(
      'PAYLOAD_TOO_LARGE',
      `dashboard request bodies are limited to ${api.config.dashboardBodyLimitBytes} bytes (WARREN_DASHBOARD_BODY_LIMIT_BYTES)`,
    );
  }
  const headers = forwardedHeaders(req, ref, upgrade !== undefined);
  const hasBody = req.headers['transfer-encoding'] !== undefined || length > 0;
  const exchange = await proxy
    .forward(host, {
      method: req.raw.method ?? 'GET',
      path: vmProxyPath(vmIdOfTenant(tenant.id), tenant.dashboard_port, upstreamPath(req.raw.url ?? '/')),
      headers: toHeaderObject(headers),
      ...(hasBody && !upgrade ? { body: req.raw } : {}),
      bodyLimit: api.config.dashboardBodyLimitBytes,
      onAbort: (abort) => {
        const onClose = () => abort();
        (upgrade?.socket ?? reply.raw).once('close', onClose);
      },
    })
    .catch((e: unknown) => {
      if ((e as WarrenError).code === 'PAYLOAD_TOO_LARGE') reply.header('connection', 'close');
      throw e;
    });
  if (DashboardProxy.isAgentAnswer(exchange.res)) {
    if (exchange.kind === 'upgrade') exchange.socket.destroy();
    throw await DashboardProxy.agentError(host, tenant.name, exchange.res);
  }
  const out = responseHeaders(exchange.res.rawHeaders, req.id);
  reply.hijack();
  if (exchange.kind === 'upgrade') {
    if (!upgrade) {
      // Cannot happen: the handshake headers are only sent for an upgrade request.
      exchange.socket.destroy();
      reply.raw.destroy();
      return;
    }
    out.unshift(['connection', 'Upgrade'], ['upgrade', exchange.res.headers.upgrade ?? 'websocket']);
    proxy.tunnel(upgrade.socket, upgrade.head, exchange, out);
    return;
  }
  const res = exchange.res;
  reply.raw.writeHead(res.statusCode ?? 502, toHeaderObject(out));
  proxy.track(reply.raw);
  // Streamed as it arrives: a large download or an event stream is never held in memory.
  await pipeline(res, reply.raw).catch(() => {
    res.destroy();
    reply.raw.destroy();
  });
  return;
}

/** The tenant's host, if the tenant runs there and the host is alive. */
async function hostOf(api: Api, tenant: TenantsTable): Promise<HostsTable> {
  if (tenant.desired_state !== 'running' || tenant.state !== 'running') {
    const state =
      tenant.desired_state === 'absent'
        ? 'being deleted'
        : tenant.desired_state === 'stopped' && tenant.state !== 'stopped'
          ? 'being stopped'
          : tenant.state;
    throw new WarrenError(
      'DASHBOARD_UNAVAILABLE',
      `tenant ${tenant.name} is ${state}: its dashboard is served only while it is running`,
    );
  }
  return api.hosts.liveHostOf(tenant);
}

function splitUrl(url: string): [string, string] {
  const q = url.indexOf('?');
  return q < 0 ? [url, ''] : [url.slice(0, q), url.slice(q)];
}

/**
 * What follows `/t/<tenant>/dashboard` in the request, with the query: `/t/x/dashboard/` is
 * `/`. Dot segments are resolved the way a browser would (`/a/../b` is `/b`, `%2e%2e` too),
 * so the path cannot climb out of the agent's proxy route on its way there.
 */
export function upstreamPath(rawUrl: string): string {
  const [path, query] = splitUrl(rawUrl);
  const m = /^\/t\/[^/]+\/dashboard(\/.*)$/s.exec(path);
  if (!m) throw new WarrenError('INVALID_ARGUMENT', 'a dashboard path starts with /t/<tenant>/dashboard/');
  // A fixed origin in front: `//host/x` stays a path and never becomes a host.
  const url = new URL(`http://upstream.invalid${m[1]}${query}`);
  return `${url.pathname}${url.search}`;
}

/**
 * The request headers the VM gets: the client's, without the platform's credentials (the
 * Authorization header and the session cookie; other cookies stay), without hop-by-hop
 * headers and without any forwarding headers the client made up; then the control plane's own
 * X-Forwarded-For/-Proto/-Host/-Prefix. The VM never sees a platform token.
 */
function forwardedHeaders(req: FastifyRequest, ref: string, upgrade: boolean): [string, string][] {
  const out = endToEndHeaders(req.raw.rawHeaders).filter(
    ([name]) =>
      name !== 'host' &&
      name !== 'authorization' &&
      name !== 'cookie' &&
      name !== 'expect' &&
      name !== 'forwarded' &&
      name !== 'x-real-ip' &&
      !name.startsWith('x-forwarded-') &&
      !name.startsWith('x-warren-'),
  );
  const cookie = withoutSessionCookie(req.headers.cookie);
  if (cookie !== undefined) out.push(['cookie', cookie]);
  const socket = req.raw.socket as TLSSocket;
  out.push(['x-forwarded-for', (socket.remoteAddress ?? '').replace(/^::ffff:/, '')]);
  out.push(['x-forwarded-proto', socket.encrypted ? 'https' : 'http']);
  if (req.headers.host !== undefined) out.push(['x-forwarded-host', req.headers.host]);
  out.push(['x-forwarded-prefix', dashboardPrefix(ref)]);
  if (upgrade) out.push(['connection', 'Upgrade'], ['upgrade', req.headers.upgrade ?? 'websocket']);
  return out;
}

/**
 * The response headers the client gets: the VM's, without hop-by-hop headers, the agent's
 * marker, any attempt of the VM to set the platform's session cookie (a dashboard could
 * otherwise log its visitor into a session of its choosing), and Service-Worker-Allowed:
 * without it a service worker a dashboard registers stays inside its own
 * `/t/<tenant>/dashboard/` and cannot take over the origin's other dashboards or the API.
 */
function responseHeaders(rawHeaders: string[], requestId: string): [string, string][] {
  const out = endToEndHeaders(rawHeaders).filter(
    ([name, value]) =>
      name !== PROXY_UPSTREAM_HEADER &&
      name !== 'x-request-id' &&
      name !== 'service-worker-allowed' &&
      !(name === 'set-cookie' && cookieName(value) === SESSION_COOKIE),
  );
  out.push(['x-request-id', requestId]);
  return out;
}

function cookieName(setCookie: string): string {
  const eq = setCookie.indexOf('=');
  return (eq < 0 ? setCookie : setCookie.slice(0, eq)).trim().toLowerCase();
}
