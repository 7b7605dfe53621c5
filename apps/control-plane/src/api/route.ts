import { parseOrThrow, TenantRef, WarrenError } from '@warren/protocol';
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify';
import type { z } from 'zod';
import { checkConsoleRequest, lookupConsoleSession } from '../auth/console.ts';
import { actorOf, authenticate, type Principal } from '../auth/principal.ts';
import { authenticateSession } from '../auth/sessions.ts';
import type { EventPublisher } from '../events/publisher.ts';
import { now } from '../ids.ts';
import type { TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import { findTenantForPrincipal } from '../tenants/scope.ts';
import { toWarrenError } from './errors.ts';
import type { RateLimiter } from './rate-limit.ts';

/**
 * Who may call a route. `tenant` routes take a tenant key (scoped to its tenant) or the admin
 * token; `admin` only the admin token; `host` a host agent's token; `join` the join token.
 * `session` routes (only those of a dashboard origin) take the origin's session cookie and no
 * bearer token; every other route ignores cookies, so no page can drive the API with them.
 */
export type RouteAuth = 'public' | 'admin' | 'tenant' | 'host' | 'join' | 'session';

const ALLOWED: Record<RouteAuth, Principal['kind'][]> = {
  public: [],
  session: ['admin', 'tenant'],
  admin: ['admin'],
  tenant: ['admin', 'tenant'],
  host: ['host'],
  join: ['join'],
};

export interface RouteSpec<B extends z.ZodType | undefined, Q extends z.ZodType | undefined> {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'OPTIONS';
  /** Fastify path; a `:tenant` segment is resolved and scope-checked before the handler. */
  url: string;
  auth: RouteAuth;
  summary: string;
  body?: B;
  query?: Q;
  /** Success status and schema, for the OpenAPI document. */
  response: { status: number; schema?: z.ZodType; contentType?: string };
  /** Request body that is a raw byte stream instead of JSON. */
  streamBody?: boolean;
  /** Largest body for this route, when it differs from WARREN_BODY_LIMIT_BYTES. */
  bodyLimit?: number;
  /** Audit action for mutations, e.g. `tenant.create`. */
  audit?: string;
}

export interface RouteContext<B, Q> {
  req: FastifyRequest;
  reply: FastifyReply;
  principal: Principal | undefined;
  body: B;
  query: Q;
  params: Record<string, string>;
  /** The tenant named by `:tenant`, already checked to be visible to the principal. */
  tenant: TenantsTable | undefined;
  /** Handlers refine what the audit event names. */
  audit: { target?: string; tenantId?: string | null };
}

type Infer<S> = S extends z.ZodType ? z.output<S> : undefined;

/** Every route of the API, for the OpenAPI document and the authorization tests. */
export interface RegisteredRoute {
  method: string;
  url: string;
  auth: RouteAuth;
  summary: string;
  body?: z.ZodType;
  query?: z.ZodType;
  response: { status: number; schema?: z.ZodType; contentType?: string };
  streamBody: boolean;
  audit?: string;
}

/**
 * Where the web console reaches the API: every `/v1` route that takes the admin token or a
 * tenant key is also declared at `CONSOLE_API_PREFIX + url`, the same handler with the same
 * scope, authenticated by the console's session cookie (auth/console.ts) instead of a bearer
 * token. `/v1` itself never reads a cookie.
 */
export const CONSOLE_API_PREFIX = '/console/api';

/**
 * Declares one route: authentication, the tenant scope check, input validation and audit
 * happen here and only here, so a handler cannot forget them.
 */
export function defineRoute<B extends z.ZodType | undefined, Q extends z.ZodType | undefined>(
  app: FastifyInstance,
  services: { db: Db; rateLimiter?: RateLimiter; events?: EventPublisher },
  registry: RegisteredRoute[],
  spec: RouteSpec<B, Q>,
  handler: (ctx: RouteContext<Infer<B>, Infer<Q>>) => Promise<unknown>,
): void {
  const { db, rateLimiter, events } = services;
  registry.push({ ...spec, streamBody: spec.streamBody ?? false });
  // What a request changed goes to the event stream once committed: reads change nothing.
  const changes = spec.method !== 'GET' || spec.audit !== undefined;
  const hosts = spec.url.startsWith('/v1/hosts') || spec.url === '/v1/agent/join' ? true : undefined;
  const touch = (audit: RouteContext<unknown, unknown>['audit'], tenant: TenantsTable | undefined) => {
    if (changes)
      events?.touch({ tenants: [audit.tenantId, tenant?.id], hosts, audit: spec.audit !== undefined });
  };
  const route: RouteOptions = {
    method: spec.method,
    url: spec.url,
    ...(spec.bodyLimit ? { bodyLimit: spec.bodyLimit } : {}),
    handler: async (req, reply) => {
      const params = (req.params ?? {}) as Record<string, string>;
      const audit: RouteContext<unknown, unknown>['audit'] = {};
      let principal: Principal | undefined;
      let tenant: TenantsTable | undefined;
      try {
        if (spec.auth !== 'public' && req.routeOptions.url?.startsWith(CONSOLE_API_PREFIX)) {
          const session = await lookupConsoleSession(db, req.headers);
          principal = session;
          if (params.tenant !== undefined) audit.target = params.tenant.slice(0, 200);
          checkConsoleRequest(req.headers, session.sessionId, { websocket: isWebSocket(req) });
        } else if (spec.auth !== 'public') {
          principal =
            spec.auth === 'session'
              ? await authenticateSession(db, req.headers, req.method)
              : await authenticate(db, req.headers.authorization);
        }
        if (principal) {
          rateLimiter?.take(principal.keyId);
          if (!ALLOWED[spec.auth].includes(principal.kind)) {
            throw new WarrenError('FORBIDDEN', `${spec.method} ${spec.url} needs ${describe(spec.auth)}`);
          }
        }
        // A public route has no principal to scope by; one that names a tenant checks its own way.
        if (params.tenant !== undefined && spec.auth !== 'public') {
          audit.target = params.tenant;
          const ref = parseOrThrow(TenantRef, params.tenant);
          tenant = await findTenantForPrincipal(db, principal, ref);
          audit.tenantId = tenant.id;
        }
        const body = spec.body && !spec.streamBody ? parseOrThrow(spec.body, req.body ?? {}) : undefined;
        const query = spec.query ? parseOrThrow(spec.query, req.query ?? {}) : undefined;
        const result = await handler({
          req,
          reply,
          principal,
          body: body as Infer<B>,
          query: query as Infer<Q>,
          params,
          tenant,
          audit,
        });
        if (spec.audit) await record(db, req, principal, spec.audit, audit, reply.statusCode, 'ok');
        touch(audit, tenant);
        if (reply.sent) return reply;
        if (result === undefined) return reply.status(spec.response.status).send();
        return reply.status(spec.response.status).send(result);
      } catch (error) {
        const e = toWarrenError(error);
        // Requests without a valid token are not recorded: anyone could fill the log with them;
        // nor are those over the rate limit, which exists to bound exactly that work.
        if (spec.audit && e.code !== 'UNAUTHENTICATED' && e.code !== 'RATE_LIMITED') {
          // A tenant probing another tenant's resource is recorded against the prober only.
          if (principal?.kind === 'tenant' && audit.tenantId !== principal.tenantId) {
            audit.tenantId = principal.tenantId;
          }
          await record(db, req, principal, spec.audit, audit, e.status, e.code).catch(() => {});
        }
        if (e.code !== 'UNAUTHENTICATED') touch(audit, tenant);
        throw e;
      }
    },
  };
  app.route(route);
  if (spec.url.startsWith('/v1/') && (spec.auth === 'admin' || spec.auth === 'tenant')) {
    app.route({ ...route, url: `${CONSOLE_API_PREFIX}${spec.url}` });
  }
}

function isWebSocket(req: FastifyRequest): boolean {
  return req.method === 'GET' && /^websocket$/i.test(req.headers.upgrade ?? '');
}

function describe(auth: RouteAuth): string {
  switch (auth) {
    case 'admin':
      return 'the admin token';
    case 'tenant':
      return 'a tenant key or the admin token';
    case 'host':
      return "a host agent's token";
    case 'join':
      return 'the join token';
    case 'public':
      return 'no token';
    case 'session':
      return "the dashboard origin's session cookie";
  }
}

export async function record(
  db: Db,
  req: FastifyRequest,
  principal: Principal | undefined,
  action: string,
  audit: RouteContext<unknown, unknown>['audit'],
  status: number,
  result: string,
): Promise<void> {
  await db
    .insertInto('audit_events')
    .values({
      at: now(),
      actor: actorOf(principal),
      action,
      target: (audit.target ?? '-').slice(0, 200),
      tenant_id: audit.tenantId ?? (principal?.kind === 'tenant' ? principal.tenantId : null),
      result,
      status,
      request_id: req.id,
    })
    .execute();
}
