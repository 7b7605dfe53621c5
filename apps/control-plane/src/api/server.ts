import { randomBytes } from 'node:crypto';
import { HealthResponse, WarrenError } from '@warren/protocol';
import { instrumentHttp, type Logger, logHandedOverRequests, RequestLogController } from '@warren/telemetry';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply } from 'fastify';
import { DashboardProxy } from '../agents/dashboard-proxy.ts';
import { registerMetricsRoute } from '../metrics.ts';
import { requestContext } from '../request-context.ts';
import type { Api } from './context.ts';
import { apiContext } from './context.ts';
import { rewriteDashboardHost } from './dashboard-host.ts';
import { toWarrenError } from './errors.ts';
import { openApiDocument } from './openapi.ts';
import { defineRoute, type RegisteredRoute } from './route.ts';
import { adminRoutes } from './routes/admin.ts';
import { agentRoutes } from './routes/agent.ts';
import { backupRoutes } from './routes/backups.ts';
import { consoleRoutes } from './routes/console.ts';
import { checkDashboardRequest, dashboardRoutes } from './routes/dashboard.ts';
import { eventRoutes } from './routes/events.ts';
import { guestRoutes } from './routes/guest.ts';
import { secretRoutes } from './routes/secrets.ts';
import { sessionRoutes } from './routes/sessions.ts';
import { skillRoutes } from './routes/skills.ts';
import { snapshotRoutes } from './routes/snapshots.ts';
import { tenantSessionRoutes } from './routes/tenant-sessions.ts';
import { tenantRoutes } from './routes/tenants.ts';
import { routeUpgrades } from './upgrade.ts';

export const VERSION = '0.1.0';

export interface ApiServer {
  app: FastifyInstance;
  /** The /v1 API, for the OpenAPI document and the authorization tests. */
  routes: RegisteredRoute[];
  /**
   * The dashboard proxy (`/t/:tenant/dashboard/*`), declared the same way but kept apart:
   * it is not JSON and not in the OpenAPI document, and a stopped tenant's dashboard is a
   * legitimate 503, which the /v1 fuzz test's "never 5xx" rule does not allow for.
   */
  dashboardRoutes: RegisteredRoute[];
}

/** The `/v1` API: one error format, every route declared through `route()` (auth, scope, audit). */
export function createApiServer(
  services: Omit<Api, 'route'>,
  log: (m: string) => void,
  logger?: Logger,
): ApiServer {
  const app = Fastify({
    // Fastify's own logger is the daemon's (JSON lines, secrets redacted); tests in process run without.
    ...(logger
      ? {
          // pino's Logger is Fastify's logger; only the declared types differ.
          loggerInstance: logger as unknown as FastifyBaseLogger,
          logController: new RequestLogController(['/v1/agent/heartbeat', '/metrics', '/v1/health']),
        }
      : { logger: false }),
    bodyLimit: services.config.bodyLimitBytes,
    genReqId: () => `req_${randomBytes(8).toString('hex')}`,
    // Long names or ids in a path are refused by validation anyway; this keeps the router cheap.
    routerOptions: { maxParamLength: 200 },
    // Requests to a dashboard origin (`<tenant>.<WARREN_DASHBOARD_DOMAIN>`) reach only its routes.
    rewriteUrl: rewriteDashboardHost(services.config.dashboardDomain),
    // Router-level refusals (bad percent-encoding, over-long params) get our error format too.
    frameworkErrors: (error, _req, reply: FastifyReply) => {
      void reply.status(400).send(new WarrenError('INVALID_ARGUMENT', error.message.slice(0, 300)).toBody());
    },
  });
  const routes: RegisteredRoute[] = [];
  const api = apiContext(app, routes, services);

  // File uploads arrive as a raw stream; the route counts bytes against its own limit.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });
  if (logger) logHandedOverRequests(app);
  // The request id travels with everything the request does, to the host agents it calls too.
  app.addHook('onRequest', (req, _reply, done) => requestContext.run({ requestId: req.id }, done));
  instrumentHttp(app, services.metrics.registry);
  registerMetricsRoute(app, services);

  app.setErrorHandler((error, req, reply) => {
    const e = toWarrenError(error);
    if (e.code === 'INTERNAL')
      log(`${req.id} ${req.method} ${req.url}: ${String((error as Error)?.stack ?? error)}`);
    const retryAfter = e.details?.retryAfterSeconds;
    if (typeof retryAfter === 'number') reply.header('retry-after', String(retryAfter));
    void reply.status(e.status).send(e.toBody());
  });
  app.setNotFoundHandler((req, reply) => {
    const url = req.originalUrl ?? req.url;
    const e = new WarrenError('NOT_FOUND', `no route ${req.method} ${url.split('?')[0]!.slice(0, 200)}`);
    void reply.status(404).send(e.toBody());
  });

  api.route(
    {
      method: 'GET',
      url: '/v1/health',
      auth: 'public',
      summary: 'Liveness: answers when the API and its store work',
      response: { status: 200, schema: HealthResponse },
    },
    async () => {
      await services.db.selectFrom('hosts').select('id').limit(1).execute();
      return { ok: true, version: VERSION };
    },
  );
  tenantRoutes(api);
  guestRoutes(api);
  snapshotRoutes(api);
  backupRoutes(api);
  secretRoutes(api);
  tenantSessionRoutes(api);
  adminRoutes(api);
  agentRoutes(api);
  skillRoutes(api);
  sessionRoutes(api);
  eventRoutes(api, services.hub);
  app.addHook('preClose', async () => services.hub.closeAll());
  consoleRoutes(app, services);

  const dashboard: RegisteredRoute[] = [];
  const proxy = new DashboardProxy({
    timeoutMs: services.config.dashboardTimeoutMs,
    wsIdleMs: services.config.dashboardWsIdleMs,
    responseIdleMs: services.config.dashboardResponseIdleMs,
    onBytes: (direction, n) => services.metrics.dashboardBytes.inc({ direction }, n),
  });
  // WebSocket handshakes take the same route handlers (and so the same auth) as any request.
  routeUpgrades(app);
  // Open tunnels and streams would otherwise hold close() until their clients leave.
  app.addHook('preClose', async () => proxy.close());
  app.register(async (scope) => {
    // A dashboard's bodies are its own business: no parser reads them, they stream through.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, _payload, done) => done(null));
    scope.addHook('onRequest', checkDashboardRequest);
    dashboardRoutes(
      {
        ...api,
        route: (spec, handler) => defineRoute(scope, services, dashboard, spec, handler as never),
      },
      proxy,
    );
  });
  let doc: unknown;
  api.route(
    {
      method: 'GET',
      url: '/v1/openapi.json',
      auth: 'public',
      summary: 'This API as an OpenAPI 3.1 document',
      response: { status: 200 },
    },
    // Built on first request, when every route (this one included) is registered.
    async () => {
      doc ??= openApiDocument(routes, VERSION);
      return doc;
    },
  );
  return { app, routes, dashboardRoutes: dashboard };
}
