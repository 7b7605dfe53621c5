import { createHash, timingSafeEqual } from 'node:crypto';
import { tenantIdOfVm, WarrenError } from '@warren/protocol';
import { instrumentHttp, logHandedOverRequests } from '@warren/telemetry';
import Fastify, { type FastifyInstance } from 'fastify';
import { MAX_STREAMS_PER_VM_DEFAULT, PROXY_IDLE_DEFAULTS } from '../config.ts';
import type { Host } from '../host.ts';
import { registerHostMetricsRoute } from '../metrics.ts';
import { registerBackupRoutes } from './backups.ts';
import { registerGuestRoutes, useWarrenErrors } from './common.ts';
import { fastifyLogging } from './logging.ts';
import { guestIpTarget, type ResolveVmTarget, registerProxyRoutes } from './proxy.ts';
import { registerSnapshotRoutes } from './snapshots.ts';

export interface RemoteApiOptions {
  /** The secret the control plane presents as `Authorization: Bearer <agentToken>`. */
  agentToken: string;
  /** Called by `POST /v1/wake`: desired state changed, heartbeat now. */
  onWake: () => void;
  /**
   * Where the dashboard proxy connects for a VM's port; the VM's guest IP unless replaced
   * (tests point it at a loopback server).
   */
  resolveVmTarget?: ResolveVmTarget;
  /** The dashboard proxy's idle limits (WARREN_PROXY_IDLE_MS, WARREN_PROXY_WS_IDLE_MS). */
  proxyIdle?: { idleMs: number; wsIdleMs: number };
  /** WARREN_MAX_STREAMS_PER_VM: exec and file streams one VM may have open at once. */
  maxStreamsPerVm?: number;
  /** WARREN_METRICS_TOKEN: what Prometheus presents for `/metrics` here; unset, `/metrics` is refused. */
  metricsToken?: string;
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Routes that use a VM's guest: open requests to them keep it from being idle. */
const GUEST_ROUTES = new Set([
  '/v1/vms/:id/health',
  '/v1/vms/:id/exec',
  '/v1/vms/:id/terminal',
  '/v1/vms/:id/files',
  '/v1/vms/:id/proxy/:port/*',
]);

/**
 * Idle reclamation: an exec, a file transfer, a dashboard request or a WebSocket tunnel counts
 * as open from its request until its connection closes, and no VM is idle while one is open.
 * (Waking a suspended VM is `guest()`'s and the proxy target's: they wait for it.)
 */
function holdWhileOpen(app: FastifyInstance, host: Host): void {
  app.addHook('onRequest', async (req, reply) => {
    const id = (req.params as { id?: string }).id;
    if (!id || !tenantIdOfVm(id) || !GUEST_ROUTES.has(req.routeOptions.url ?? '')) return;
    const release = host.vms.idle.hold(id);
    // A WebSocket is open as long as its socket; anything else, its reply.
    const open = req.headers.upgrade ? req.raw.socket : reply.raw;
    if (open.destroyed) release();
    else open.once('close', release);
  });
}

/**
 * The API the control plane calls on this host, over TCP: guest health, exec and files of
 * tenant VMs, the dashboard proxy to a port of a tenant VM (HTTP and WebSocket, `proxy.ts`),
 * and a wake-up for the reconciler. Lifecycle is not here on purpose: the control
 * plane changes desired state and the agent converges to it through heartbeats.
 *
 * Only `ten-<hex>` VMs exist for this API; any other id is VM_NOT_FOUND, so a control plane
 * (or whoever holds its token) cannot reach VMs an operator made through the local API.
 */
export function createRemoteApi(host: Host, options: RemoteApiOptions): FastifyInstance {
  const app = Fastify({ ...fastifyLogging(host.logger), bodyLimit: 16 * 1024 * 1024 });
  useWarrenErrors(app);
  if (host.logger) logHandedOverRequests(app);
  const expected = digest(options.agentToken);
  const metrics = host.metrics;
  if (metrics) {
    instrumentHttp(app, metrics.registry);
    registerHostMetricsRoute(app, metrics, {
      token: options.metricsToken,
      otherCredentials: [options.agentToken],
    });
    // Exec streams take over their response: counted when it closes, by its status.
    app.addHook('onRequest', async (req, reply) => {
      if (req.routeOptions.url !== '/v1/vms/:id/exec') return;
      reply.raw.once('close', () =>
        metrics.execs.inc({ result: reply.raw.statusCode === 200 ? 'ok' : String(reply.raw.statusCode) }),
      );
    });
  }

  app.addHook('onRequest', async (req) => {
    // Metrics have their own token (registerHostMetricsRoute), never the agent token.
    if (req.routeOptions.url === '/metrics') return;
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    // Comparing digests keeps the comparison constant-time whatever the presented length.
    if (!m || !timingSafeEqual(digest(m[1]!), expected)) {
      throw new WarrenError('UNAUTHENTICATED', 'missing or wrong agent token');
    }
  });

  const tenantVm = (id: string) => {
    if (!tenantIdOfVm(id)) throw new WarrenError('VM_NOT_FOUND', `no tenant VM ${id} on this host`);
  };
  const guestOf = async (id: string) => {
    tenantVm(id);
    return host.vms.guest(id);
  };
  holdWhileOpen(app, host);
  registerSnapshotRoutes(app, host.vms, tenantVm);
  registerBackupRoutes(app, host.backups, tenantVm);

  registerGuestRoutes(app, guestOf, {
    maxStreamsPerVm: options.maxStreamsPerVm ?? MAX_STREAMS_PER_VM_DEFAULT,
  });
  registerProxyRoutes(
    app,
    options.resolveVmTarget ?? guestIpTarget(host.vms),
    options.proxyIdle ?? PROXY_IDLE_DEFAULTS,
    (direction, n) => metrics?.proxyBytes.inc({ direction }, n),
  );
  app.post('/v1/wake', async (_req, reply) => {
    options.onWake();
    return reply.status(204).send();
  });
  return app;
}
