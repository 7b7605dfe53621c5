import {
  ChangeList,
  CreateTenantSessionRequest,
  EndTenantSessionRequest,
  MAX_CREDENTIAL_BYTES,
  parseOrThrow,
  TenantSession,
  TenantSessionId,
  TenantSessionList,
} from '@warren/protocol';
import type { Api } from '../context.ts';

/**
 * Safe-YOLO sessions (`/v1/tenants/{t}/sessions`). The create body carries credentials: the
 * route machinery records no request body anywhere (the audit entry is action, target and
 * status), and the service passes them to the host agent only.
 */
export function tenantSessionRoutes(api: Api): void {
  const sessionId = (params: Record<string, string>) => parseOrThrow(TenantSessionId, params.session);

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/sessions',
      auth: 'tenant',
      summary:
        "Start a session: a clean snapshot of the running VM (made, or reused when unchanged), then the credentials in the guest's tmpfs",
      body: CreateTenantSessionRequest,
      // Up to MAX_CREDENTIAL_BYTES of credentials, which JSON escaping can make larger.
      bodyLimit: Math.max(api.config.bodyLimitBytes, 4 * MAX_CREDENTIAL_BYTES),
      response: { status: 201, schema: TenantSession },
      audit: 'tenant.session.create',
    },
    async ({ tenant, body, audit }) => {
      const session = await api.tenantSessions.create(tenant!, body);
      audit.target = `${tenant!.name}:${session.id}`;
      return session;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/sessions',
      auth: 'tenant',
      summary: "List the tenant's sessions, newest first (the last 100)",
      response: { status: 200, schema: TenantSessionList },
    },
    async ({ tenant }) => ({ sessions: await api.tenantSessions.list(tenant!) }),
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/sessions/:session',
      auth: 'tenant',
      summary: 'Show one session',
      response: { status: 200, schema: TenantSession },
    },
    async ({ tenant, params }) => api.tenantSessions.get(tenant!, sessionId(params)),
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/sessions/:session/changes',
      auth: 'tenant',
      summary:
        "The files changed on the VM's root disk and data volume since the session's clean snapshot (while it is active)",
      response: { status: 200, schema: ChangeList },
    },
    async ({ tenant, params }) => api.tenantSessions.changes(tenant!, sessionId(params)),
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/sessions/:session/end',
      auth: 'tenant',
      summary:
        'End a session: remove its credentials from the guest, then revert the VM to the clean snapshot (or keep it as it is, with keep: true)',
      body: EndTenantSessionRequest,
      response: { status: 200, schema: TenantSession },
      audit: 'tenant.session.end',
    },
    async ({ tenant, params, body, audit }) => {
      const id = sessionId(params);
      audit.target = `${tenant!.name}:${id}`;
      return api.tenantSessions.end(tenant!, id, body.keep);
    },
  );
}
