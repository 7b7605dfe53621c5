import type { TLSSocket } from 'node:tls';
import {
  DASHBOARD_LOGIN_PATH,
  DASHBOARD_LOGOUT_PATH,
  dashboardPrefix,
  endToEndHeaders,
  isPlatformCookieName,
  PROXY_UPSTREAM_HEADER,
  ResourceName,
  vmIdOfTenant,
  vmProxyPath,
  WarrenError,
  workloadOf,
} from '@warren/protocol';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { DashboardProxy, toHeaderObject } from '../../agents/dashboard-proxy.ts';
import {
  clearedSessionCookie,
  cookiesForVm,
  endSession,
  redeemLoginCode,
  refuseDuplicateSessionCookies,
  sessionCookie,
} from '../../auth/sessions.ts';
import type { HostsTable, TenantsTable } from '../../store/database.ts';
import { imageProfiles } from '../../tenants/service.ts';
import { servesRequests } from '../../tenants/view.ts';
import type { Api } from '../context.ts';
import { cameByDashboardHost, HOST_ROUTE_PREFIX } from '../dashboard-host.ts';
import { takeUpgrade } from '../upgrade.ts';

/** Every method a dashboard may use; HEAD comes with GET. */
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/**
 * How the request named the dashboard. `host`: a browser on the tenant's own origin
 * (`<tenant>.<WARREN_DASHBOARD_DOMAIN>`, the app at `/`), authenticated by that origin's session
 * cookie only. `path`: a program on the API's origin (`/t/<ref>/dashboard/…`), authenticated by a
 * bearer token only; no cookie counts there, since every such path shares one origin.
 */
type Form = { kind: 'host' } | { kind: 'path'; ref: string };

const LoginQuery = z.object({ code: z.string().max(100).optional() });

/**
 * The dashboard routes: they forward HTTP and WebSocket to the tenant's dashboard port, through
 * the tenant's host agent (the control plane may run on another machine, and only the agent can
 * reach the VM). Declared with `route()` like every other route, so authentication, the tenant
 * scope check (another tenant's dashboard is NOT_FOUND) and the error format are the same;
 * WebSocket handshakes go through the same handlers (`routeUpgrades`). Proxied requests are not
 * audited: a dashboard makes far too many.
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
        summary: `Tenant dashboard for programs (${method}${method === 'GET' ? ', HEAD and WebSocket' : ''}): forwarded to the dashboard port of the tenant's VM; bearer token only`,
        response: { status: 200, contentType: '*/*' },
      },
      ({ req, reply, tenant, params }) =>
        forward(api, proxy, req, reply, tenant!, { kind: 'path', ref: params.tenant! }),
    );
  }
  api.route(
    {
      method: 'GET',
      url: '/t/:tenant/dashboard',
      auth: 'tenant',
      summary: "Redirects to the dashboard's root with a trailing slash, so relative links resolve under it",
      response: { status: 308 },
    },
    async ({ req, reply }) => {
      const [path, query] = splitUrl(req.raw.url ?? '');
      return reply.redirect(`${path}/${query}`, 308);
    },
  );

  // The dashboard origins. `:tenant` is the label of the Host, put there by rewriteDashboardHost.
  for (const method of METHODS) {
    api.route(
      {
        method,
        url: `${HOST_ROUTE_PREFIX}/:tenant/*`,
        auth: 'session',
        summary: `Tenant dashboard on its own origin <tenant>.<WARREN_DASHBOARD_DOMAIN> (${method}${method === 'GET' ? ', HEAD and WebSocket' : ''}): forwarded to the dashboard port of the tenant's VM; session cookie only`,
        response: { status: 200, contentType: '*/*' },
      },
      ({ req, reply, tenant }) => forward(api, proxy, req, reply, tenant!, { kind: 'host' }),
    );
    // Reserved for the platform on every dashboard origin; the app never sees these paths.
    api.route(
      {
        method,
        url: `${HOST_ROUTE_PREFIX}/:tenant/.warren/*`,
        auth: 'public',
        summary: 'Reserved paths of a dashboard origin',
        response: { status: 404 },
      },
      async ({ req }) => {
        throw new WarrenError(
          'NOT_FOUND',
          `no platform path ${originalPath(req).slice(0, 100)} on a dashboard origin`,
        );
      },
    );
  }
  api.route(
    {
      method: 'GET',
      url: `${HOST_ROUTE_PREFIX}/:tenant${DASHBOARD_LOGIN_PATH}`,
      auth: 'public',
      summary:
        'Log in to a dashboard origin with a one-time code from `POST /v1/sessions`: sets its session cookie, then goes on to /',
      query: LoginQuery,
      response: { status: 200, contentType: 'text/html' },
    },
    async ({ reply, params, query }) => {
      const name = ResourceName.safeParse(params.tenant);
      const ttl = api.config.sessionTtlMs;
      const session = await redeemLoginCode(api.db, query.code, name.success ? name.data : '', ttl);
      // A page, not a redirect: the cookie is SameSite=Strict, and a redirect that follows a link
      // from another site (the console) is still that site's navigation, so the browser would not
      // send the new cookie with it. The refresh comes from this origin itself.
      reply
        .header('set-cookie', sessionCookie(session.id, ttl))
        .header('cache-control', 'no-store')
        // The code is spent, but it stays out of the app's Referer and logs all the same.
        .header('referrer-policy', 'no-referrer')
        .header('content-security-policy', "default-src 'none'; frame-ancestors 'none'")
        .header('content-type', 'text/html; charset=utf-8');
      const to = escapeHtml(await landingPath(api, session.tenantId));
      return `<!doctype html><meta http-equiv="refresh" content="0;url=${to}"><title>Logged in</title><a href="${to}">Open the dashboard</a>\n`;
    },
  );
  api.route(
    {
      method: 'POST',
      url: `${HOST_ROUTE_PREFIX}/:tenant${DASHBOARD_LOGOUT_PATH}`,
      auth: 'session',
      summary: 'Log out of a dashboard origin: ends the session named by its cookie and clears the cookie',
      response: { status: 204 },
      audit: 'session.delete',
    },
    async ({ req, reply, audit }) => {
      audit.target = 'current';
      await endSession(api.db, req.headers);
      reply.header('set-cookie', clearedSessionCookie());
    },
  );
}

/**
 * Where the login page goes on to: `/`, or, for a tenant whose image runs a workload with its
 * own token (the OpenClaw gateway), `/#token=<token>`: the browser has just proved it may use
 * this tenant's dashboard, and the app reads its token from the fragment, which is never sent
 * to a server (docs/security.md, "Workload tokens").
 */
async function landingPath(api: Api, tenantId: string): Promise<string> {
  const row = await api.db
    .selectFrom('tenants')
    .select('image_id')
    .where('id', '=', tenantId)
    .executeTakeFirst();
  const workload = row && workloadOf((await imageProfiles(api.db)).get(row.image_id));
  if (!workload) return '/';
  const token = await api.secrets.open(tenantId, workload.tokenSecret);
  if (!token) return '/';
  try {
    return `/#${workload.loginFragment}=${encodeURIComponent(token.toString('utf8'))}`;
  } finally {
    token.fill(0);
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Runs first on every request of the dashboard scope: the host-form routes answer only requests
 * that came by a dashboard host, and a request carrying the session cookie twice is refused in
 * either form (a page planted one).
 */
export async function checkDashboardRequest(req: FastifyRequest): Promise<void> {
  if ((req.raw.url ?? '').startsWith(`${HOST_ROUTE_PREFIX}/`) && !cameByDashboardHost(req.raw)) {
    throw new WarrenError('NOT_FOUND', `no route ${req.method} ${originalPath(req).slice(0, 200)}`);
  }
  if (
    cameByDashboardHost(req.raw) &&
    !ResourceName.safeParse((req.params as { tenant?: string }).tenant).success
  ) {
    throw new WarrenError('NOT_FOUND', `no dashboard at ${String(req.headers.host).slice(0, 200)}`);
  }
  refuseDuplicateSessionCookies(req.headers);
}

function originalPath(req: FastifyRequest): string {
  return (req.originalUrl ?? req.raw.url ?? '').split('?')[0]!;
}

async function forward(
  api: Api,
  proxy: DashboardProxy,
  req: FastifyRequest,
  reply: FastifyReply,
  tenant: TenantsTable,
  form: Form,
): Promise<unknown> {
  const upgrade = takeUpgrade(req.raw);
  const host = await hostOf(api, tenant);
  api.streams.hold(tenant, 'dashboard', upgrade?.socket ?? reply.raw);
  const length = Number(req.headers['content-length'] ?? 0);
  if (length > api.config.dashboardBodyLimitBytes) {
    // Refused before reading it; closing the connection spares reading a body nobody wants.
    reply.header('connection', 'close');
    throw new WarrenError(
      'PAYLOAD_TOO_LARGE',
      `dashboard request bodies are limited to ${api.config.dashboardBodyLimitBytes} bytes (WARREN_DASHBOARD_BODY_LIMIT_BYTES)`,
    );
  }
  const headers = forwardedHeaders(req, form, upgrade !== undefined);
  const hasBody = req.headers['transfer-encoding'] !== undefined || length > 0;
  const exchange = await proxy
    .forward(host, {
      method: req.raw.method ?? 'GET',
      path: vmProxyPath(
        vmIdOfTenant(tenant.id),
        tenant.dashboard_port,
        upstreamPath(req.raw.url ?? '/', form),
      ),
      headers: toHeaderObject(headers),
      ...(hasBody && !upgrade ? { body: req.raw } : {}),
      bodyLimit: api.config.dashboardBodyLimitBytes,
      timeoutMs: api.config.dashboardTimeoutMs + api.hosts.wakeSlackMs(tenant),
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
  const out = responseHeaders(exchange.res.rawHeaders, req.id, form);
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
  // Streamed as it arrives: a large download or an event stream is never held in memory.
  await proxy.stream(res, reply.raw);
  return;
}

/** The tenant's host, if the tenant runs there and the host is alive. */
async function hostOf(api: Api, tenant: TenantsTable): Promise<HostsTable> {
  // A suspended tenant's host wakes it for the request.
  if (!servesRequests(tenant)) {
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
 * The path the VM gets, with the query: what follows `/t/<ref>/dashboard` (path form) or the
 * whole path of the dashboard origin (host form, rewritten under HOST_ROUTE_PREFIX/<tenant>).
 * `/t/x/dashboard/` is `/`. Dot segments are resolved the way a browser would (`/a/../b` is
 * `/b`, `%2e%2e` too), so the path cannot climb out of the agent's proxy route on its way there.
 */
export function upstreamPath(rawUrl: string, form: Form): string {
  const [path, query] = splitUrl(rawUrl);
  const m =
    form.kind === 'path'
      ? /^\/t\/[^/]+\/dashboard(\/.*)$/s.exec(path)
      : new RegExp(`^${HOST_ROUTE_PREFIX.replace('.', '\\.')}/[^/]+(/.*)$`, 's').exec(path);
  if (!m) throw new WarrenError('INVALID_ARGUMENT', 'a dashboard path starts with /t/<tenant>/dashboard/');
  // A fixed origin in front: `//host/x` stays a path and never becomes a host.
  const url = new URL(`http://upstream.invalid${m[1]}${query}`);
  return `${url.pathname}${url.search}`;
}

/**
 * The request headers the VM gets: the client's, without the platform's credentials (the
 * Authorization header, the session cookie and anything named like it; other cookies stay),
 * without hop-by-hop headers and without any forwarding headers the client made up; then the
 * control plane's own X-Forwarded-For/-Proto/-Host, and -Prefix in the path form. The VM never
 * sees a platform token.
 */
function forwardedHeaders(req: FastifyRequest, form: Form, upgrade: boolean): [string, string][] {
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
  const cookie = cookiesForVm(req.headers.cookie);
  if (cookie !== undefined) out.push(['cookie', cookie]);
  const socket = req.raw.socket as TLSSocket;
  out.push(['x-forwarded-for', (socket.remoteAddress ?? '').replace(/^::ffff:/, '')]);
  out.push(['x-forwarded-proto', socket.encrypted ? 'https' : 'http']);
  if (req.headers.host !== undefined) out.push(['x-forwarded-host', req.headers.host]);
  if (form.kind === 'path') out.push(['x-forwarded-prefix', dashboardPrefix(form.ref)]);
  if (upgrade) out.push(['connection', 'Upgrade'], ['upgrade', req.headers.upgrade ?? 'websocket']);
  return out;
}

/**
 * Headers by which a response acts on its whole origin (or site), which is the platform's, not
 * the VM's: Clear-Site-Data (its "cookies" clears every cookie of the registrable domain, so the
 * other tenants' sessions too), Strict-Transport-Security, Alt-Svc (where browsers connect for
 * the origin), NEL and the Reporting API (who receives the origin's error reports).
 */
const ORIGIN_WIDE = new Set([
  'clear-site-data',
  'strict-transport-security',
  'alt-svc',
  'nel',
  'report-to',
  'reporting-endpoints',
]);

/**
 * The response headers the client gets: the VM's, without hop-by-hop headers, the agent's
 * marker and the ORIGIN_WIDE headers, with its cookies confined (`confineSetCookie`). In the
 * path form also without Service-Worker-Allowed: without it a service worker a dashboard
 * registers stays inside its own `/t/<tenant>/dashboard/` and cannot take over the shared
 * origin's other dashboards.
 */
function responseHeaders(rawHeaders: string[], requestId: string, form: Form): [string, string][] {
  const out: [string, string][] = [];
  for (const [name, value] of endToEndHeaders(rawHeaders)) {
    if (name === PROXY_UPSTREAM_HEADER || name === 'x-request-id' || ORIGIN_WIDE.has(name)) continue;
    if (name === 'service-worker-allowed' && form.kind === 'path') continue;
    if (name === 'set-cookie') {
      const cookie = confineSetCookie(value, form);
      if (cookie !== undefined) out.push([name, cookie]);
      continue;
    }
    out.push([name, value]);
  }
  out.push(['x-request-id', requestId]);
  return out;
}

/**
 * A VM's Set-Cookie as the browser may get it, or undefined to drop it:
 * - dropped: a cookie without a name (`=x`, or `x` alone: some parsers read its value as the
 *   name, `=warren_session=…` as the platform's cookie) and any named like the platform's session;
 * - the Domain attribute removed, so the cookie stays on this host and never reaches another
 *   tenant's origin (`Domain=<dashboard domain>`) or the API's;
 * - in the path form a Path outside `/t/<ref>/dashboard` becomes that prefix, so it is not sent
 *   to other tenants' dashboards or the API on the shared origin.
 */
export function confineSetCookie(value: string, form: Form): string | undefined {
  const [pair = '', ...attributes] = value.split(';');
  const eq = pair.indexOf('=');
  const name = eq < 0 ? '' : pair.slice(0, eq).trim();
  if (name === '' || isPlatformCookieName(name)) return undefined;
  const kept: string[] = [];
  let path: string | undefined;
  for (const attribute of attributes) {
    const a = attribute.trim();
    const key = a.split('=', 1)[0]!.trim().toLowerCase();
    if (key === 'domain') continue;
    if (key === 'path') {
      path = a.slice(a.indexOf('=') + 1).trim();
      continue;
    }
    if (a !== '') kept.push(a);
  }
  if (form.kind === 'path') {
    const prefix = dashboardPrefix(form.ref);
    // Without a Path the browser takes the request's directory, which is inside the prefix.
    if (path !== undefined && path !== prefix && !path.startsWith(`${prefix}/`)) path = `${prefix}/`;
  }
  if (path !== undefined) kept.push(`Path=${path}`);
  return [pair.trim(), ...kept].join('; ');
}
