import { CreateSessionRequest, dashboardPrefix, Session, WarrenError } from '@warren/protocol';
import { clearedSessionCookie, createSession, endSessions, sessionCookie } from '../../auth/sessions.ts';
import { findTenantForPrincipal } from '../../tenants/scope.ts';
import type { Api } from '../context.ts';

/** Browser log-in and log-out for the dashboard proxy (the cookie is useless to the /v1 API). */
export function sessionRoutes(api: Api): void {
  api.route(
    {
      method: 'POST',
      url: '/v1/sessions',
      auth: 'tenant',
      summary:
        "Log a browser in to one tenant's dashboard: answers with the HttpOnly session cookie (Set-Cookie)",
      body: CreateSessionRequest,
      response: { status: 201, schema: Session },
      audit: 'session.create',
    },
    async ({ body, principal, reply, audit }) => {
      const ref = body.tenant ?? (principal?.kind === 'tenant' ? principal.tenantId : undefined);
      if (ref === undefined) {
        throw new WarrenError(
          'INVALID_ARGUMENT',
          'tenant: the admin names the tenant whose dashboard the session opens, e.g. {"tenant": "demo"}',
        );
      }
      audit.target = ref;
      const tenant = await findTenantForPrincipal(api.db, principal, ref);
      audit.tenantId = tenant.id;
      const ttl = api.config.sessionTtlMs;
      const session = await createSession(api.db, principal!, tenant.id, ttl);
      reply.header('set-cookie', sessionCookie(session.id, ttl));
      reply.header('cache-control', 'no-store');
      return {
        tenantId: tenant.id,
        tenantName: tenant.name,
        dashboardPath: `${dashboardPrefix(tenant.name)}/`,
        expiresAt: session.expiresAt,
      } satisfies Session;
    },
  );

  api.route(
    {
      method: 'DELETE',
      url: '/v1/sessions/current',
      auth: 'tenant',
      session: true,
      summary: 'Log out: ends the session named by the cookie and clears the cookie',
      response: { status: 204 },
      audit: 'session.delete',
    },
    async ({ req, reply, audit }) => {
      audit.target = 'current';
      await endSessions(api.db, req.headers.cookie);
      reply.header('set-cookie', clearedSessionCookie());
    },
  );
}
