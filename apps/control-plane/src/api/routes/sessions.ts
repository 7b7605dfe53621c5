import { CreateSessionRequest, DASHBOARD_LOGIN_PATH, Session, WarrenError } from '@warren/protocol';
import { createLoginCode } from '../../auth/sessions.ts';
import { findTenantForPrincipal } from '../../tenants/scope.ts';
import type { Api } from '../context.ts';
import { dashboardOriginOf } from '../dashboard-host.ts';

/**
 * Browser log-in to a dashboard origin, step 1: a one-time login link. The API's origin never
 * gets a session cookie (no cookie works there); the tenant's own origin sets it when the
 * browser opens the link (`routes/dashboard.ts`, step 2).
 */
export function sessionRoutes(api: Api): void {
  api.route(
    {
      method: 'POST',
      url: '/v1/sessions',
      auth: 'tenant',
      summary:
        "A one-time login link for one tenant's dashboard origin: opened in a browser, it sets that origin's session cookie",
      body: CreateSessionRequest,
      response: { status: 201, schema: Session },
      audit: 'session.create',
    },
    async ({ req, body, principal, reply, audit }) => {
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
      const login = await createLoginCode(api.db, principal!, tenant.id, api.config.dashboardLoginTtlMs);
      const origin = dashboardOriginOf(api.config, tenant.name, req.raw.socket.localPort ?? api.config.port);
      reply.header('cache-control', 'no-store');
      return {
        tenantId: tenant.id,
        tenantName: tenant.name,
        dashboardUrl: `${origin}/`,
        loginUrl: `${origin}${DASHBOARD_LOGIN_PATH}?code=${login.code}`,
        loginExpiresAt: login.expiresAt,
      } satisfies Session;
    },
  );
}
