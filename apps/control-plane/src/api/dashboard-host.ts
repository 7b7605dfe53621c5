import type { IncomingMessage } from 'node:http';
import type { ControlPlaneConfig } from '../config.ts';

/**
 * Routing by Host for the dashboard origins. A request whose Host is
 * `<tenant>.<WARREN_DASHBOARD_DOMAIN>` (any port) is a dashboard request, whatever its path:
 * before the router sees it, its URL is rewritten under HOST_ROUTE_PREFIX, where only the
 * dashboard-origin routes live. So no path on a dashboard origin reaches the /v1 API (a
 * dashboard's `fetch('/v1/…')` goes to its own VM), and those routes answer only requests that
 * came in this way (`cameByDashboardHost`), never the same path sent to the API's host.
 */
export const HOST_ROUTE_PREFIX = '/.warren-dashboard-host';

const viaHost = new WeakSet<IncomingMessage>();

/**
 * The label in front of the dashboard domain: `demo` for `demo.dashboard.localhost:7070`;
 * undefined when the host is not under the domain. The domain itself or deeper names give a
 * label that is not a tenant name (`''`, `a.b`), which then matches no tenant.
 */
export function dashboardLabelOf(hostHeader: string | undefined, domain: string): string | undefined {
  if (hostHeader === undefined) return undefined;
  const host = hostHeader
    .toLowerCase()
    .replace(/:[0-9]*$/, '')
    .replace(/\.$/, '');
  if (host === domain) return '';
  return host.endsWith(`.${domain}`) ? host.slice(0, -domain.length - 1) : undefined;
}

/** Fastify's `rewriteUrl`: runs before routing, for ordinary requests and WebSocket handshakes alike. */
export function rewriteDashboardHost(domain: string): (req: IncomingMessage) => string {
  return (req) => {
    const url = req.url ?? '/';
    const label = dashboardLabelOf(req.headers.host, domain);
    if (label === undefined) return url;
    viaHost.add(req);
    // Only origin-form targets: an absolute-form one (`GET http://api/v1/...`) lands on a
    // reserved path that answers NOT_FOUND.
    const path = url.startsWith('/') ? url : '/.warren/invalid-request-target';
    return `${HOST_ROUTE_PREFIX}/${encodeURIComponent(label || '-')}${path}`;
  };
}

export function cameByDashboardHost(req: IncomingMessage): boolean {
  return viaHost.has(req);
}

/**
 * A tenant's dashboard origin as browsers reach it: WARREN_DASHBOARD_PUBLIC_URL with the
 * tenant's label in front of its host, or by default plain HTTP on the port `localPort` (the one
 * the asking request came in on: the same server answers both).
 */
export function dashboardOriginOf(config: ControlPlaneConfig, tenantName: string, localPort: number): string {
  const url = new URL(config.dashboardPublicUrl ?? `http://${config.dashboardDomain}:${localPort}`);
  url.hostname = `${tenantName}.${url.hostname}`;
  return url.origin;
}
