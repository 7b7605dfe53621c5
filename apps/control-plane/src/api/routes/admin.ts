import {
  AdoptVmRequest,
  ApiKey,
  AuditEvent,
  AuditQuery,
  CreatedJoinToken,
  CreatedKey,
  CreateJoinTokenRequest,
  CreateKeyRequest,
  DrainRequest,
  Host,
  JoinToken,
  KeyId,
  Operation,
  OperationId,
  OperationsQuery,
  parseOrThrow,
  RemoveHostQuery,
  Tenant,
  WarrenError,
} from '@warren/protocol';
import { z } from 'zod';
import { auditEventView } from '../../audit-view.ts';
import { insertCredential } from '../../auth/credentials.ts';
import {
  createJoinToken,
  createRejoinToken,
  listJoinTokens,
  revokeJoinToken,
} from '../../hosts/join-tokens.ts';
import { findTenantForPrincipal, tenantFilter } from '../../tenants/scope.ts';
import { operationView } from '../../tenants/view.ts';
import type { Api } from '../context.ts';

/** Hosts, API keys, operations and the audit log. */
export function adminRoutes(api: Api): void {
  api.route(
    {
      method: 'GET',
      url: '/v1/hosts',
      auth: 'admin',
      summary: 'List hosts with capacity, allocation and health',
      response: { status: 200, schema: z.object({ hosts: z.array(Host) }) },
    },
    async () => ({ hosts: await api.hosts.list() }),
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/hosts/:host',
      auth: 'admin',
      summary: 'Show one host by id or name',
      response: { status: 200, schema: Host },
    },
    async ({ params }) => api.hosts.get(params.host!),
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/hosts/:host/drain',
      auth: 'admin',
      summary: 'Drain a host (no new tenants) or undo it with {"draining": false}',
      body: DrainRequest,
      response: { status: 200, schema: Host },
      audit: 'host.drain',
    },
    async ({ params, body, audit }) => {
      audit.target = params.host;
      return api.hosts.drain(params.host!, body.draining);
    },
  );

  api.route(
    {
      method: 'DELETE',
      url: '/v1/hosts/:host',
      auth: 'admin',
      summary:
        'Remove a host that is gone for good: its tenants become lost (restore them from a backup); refused while it heartbeats unless ?force=true',
      query: RemoveHostQuery,
      response: { status: 200, schema: z.object({ host: z.string(), lostTenants: z.array(z.string()) }) },
      audit: 'host.remove',
    },
    async ({ params, query, audit }) => {
      audit.target = params.host;
      const { host, lost } = await api.hosts.remove(params.host!, query.force === 'true');
      audit.target = `${host.name}${lost.length ? ` (lost: ${lost.join(', ')})` : ''}`.slice(0, 200);
      return { host: host.name, lostTenants: lost };
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/hosts/:host/quarantine/:vm/adopt',
      auth: 'admin',
      summary:
        "Adopt a VM the host keeps in quarantine: a tenant with the VM's tenant id, size and image on that host, desired stopped",
      body: AdoptVmRequest,
      response: { status: 201, schema: Tenant },
      audit: 'host.adopt',
    },
    async ({ params, body, audit }) => {
      audit.target = `${params.host}/${params.vm}`.slice(0, 200);
      const tenant = await api.hosts.adopt(params.host!, params.vm!, body.name);
      audit.tenantId = tenant.id;
      audit.target = `${params.host}/${params.vm} as ${tenant.name}`.slice(0, 200);
      return tenant;
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/hosts/:host/rejoin',
      auth: 'admin',
      summary:
        'A single-use join token that lets this host join again under its name (lost credentials, replaced machine); shown only here',
      response: { status: 201, schema: CreatedJoinToken },
      audit: 'host.rejoin',
    },
    async ({ params, audit }) => {
      audit.target = params.host;
      const host = await api.hosts.find(params.host!);
      return createRejoinToken(api.db, host, api.config.rejoinTokenTtlMs);
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/join-tokens',
      auth: 'admin',
      summary: 'Create a join token for new hosts (singleUse: consumed by the first join); shown only here',
      body: CreateJoinTokenRequest,
      response: { status: 201, schema: CreatedJoinToken },
      audit: 'join-token.create',
    },
    async ({ body, audit }) => {
      const created = await createJoinToken(api.db, body);
      audit.target = created.joinToken.id;
      return created;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/join-tokens',
      auth: 'admin',
      summary: 'List join tokens (never the tokens themselves), with the one in the join-token file',
      response: { status: 200, schema: z.object({ joinTokens: z.array(JoinToken) }) },
    },
    async () => ({ joinTokens: await listJoinTokens(api.db) }),
  );

  api.route(
    {
      method: 'DELETE',
      url: '/v1/join-tokens/:key',
      auth: 'admin',
      summary: 'Revoke a join token; joined hosts keep working with their own host tokens',
      response: { status: 204 },
      audit: 'join-token.revoke',
    },
    async ({ params, audit }) => {
      audit.target = params.key;
      await revokeJoinToken(api.db, parseOrThrow(KeyId, params.key));
      return undefined;
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/keys',
      auth: 'admin',
      summary: 'Create an API key scoped to one tenant; the token is returned only here',
      body: CreateKeyRequest,
      response: { status: 201, schema: CreatedKey },
      audit: 'key.create',
    },
    async ({ body, principal, audit }) => {
      audit.target = body.tenant;
      const tenant = await findTenantForPrincipal(api.db, principal, body.tenant);
      audit.tenantId = tenant.id;
      const { row, token } = await insertCredential(api.db, {
        kind: 'tenant',
        name: body.name ?? `key for ${tenant.name}`,
        tenantId: tenant.id,
      });
      audit.target = `${tenant.name}/${row.id}`;
      return { key: keyView(row, tenant.name), token };
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/keys',
      auth: 'admin',
      summary: 'List tenant API keys (never their tokens); ?tenant= filters by tenant',
      query: z.strictObject({ tenant: z.string().max(63).optional() }),
      response: { status: 200, schema: z.object({ keys: z.array(ApiKey) }) },
    },
    async ({ query, principal }) => {
      let q = api.db
        .selectFrom('api_keys')
        .innerJoin('tenants', 'tenants.id', 'api_keys.tenant_id')
        .selectAll('api_keys')
        .select('tenants.name as tenant_name')
        .where('api_keys.kind', '=', 'tenant')
        .orderBy('api_keys.created_at');
      if (query.tenant) {
        const t = await findTenantForPrincipal(api.db, principal, query.tenant);
        q = q.where('api_keys.tenant_id', '=', t.id);
      }
      const rows = await q.execute();
      return { keys: rows.map((r) => keyView(r, r.tenant_name)) };
    },
  );

  api.route(
    {
      method: 'DELETE',
      url: '/v1/keys/:key',
      auth: 'admin',
      summary: 'Revoke a tenant API key; it is refused from the next request on',
      response: { status: 204 },
      audit: 'key.revoke',
    },
    async ({ params, audit }) => {
      audit.target = params.key;
      const id = parseOrThrow(KeyId, params.key);
      const row = await api.db
        .selectFrom('api_keys')
        .select(['id', 'tenant_id'])
        .where('id', '=', id)
        .where('kind', '=', 'tenant')
        .executeTakeFirst();
      if (!row) throw new WarrenError('NOT_FOUND', `no API key ${id}; see \`warren key list\``);
      audit.tenantId = row.tenant_id;
      await api.db.deleteFrom('api_keys').where('id', '=', id).execute();
      return undefined;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/operations',
      auth: 'tenant',
      summary: 'Operations, newest first (`status=running`: those in progress, with their progress)',
      query: OperationsQuery,
      response: { status: 200, schema: z.object({ operations: z.array(Operation) }) },
    },
    async ({ query, principal }) => {
      let q = api.db.selectFrom('operations').selectAll().orderBy('created_at', 'desc').limit(query.limit);
      const only = tenantFilter(principal);
      if (only !== undefined) q = q.where('tenant_id', '=', only);
      if (query.tenant)
        q = q.where('tenant_id', '=', (await findTenantForPrincipal(api.db, principal, query.tenant)).id);
      if (query.status) q = q.where('status', '=', query.status);
      return { operations: (await q.execute()).map(operationView) };
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/operations/:operation',
      auth: 'tenant',
      summary: 'Show an operation (poll it until its status is not running)',
      response: { status: 200, schema: Operation },
    },
    async ({ params, principal }) => {
      const id = parseOrThrow(OperationId, params.operation);
      let q = api.db.selectFrom('operations').selectAll().where('id', '=', id);
      const only = tenantFilter(principal);
      if (only !== undefined) q = q.where('tenant_id', '=', only);
      const row = await q.executeTakeFirst();
      if (!row) throw new WarrenError('NOT_FOUND', `no operation ${id}`);
      return operationView(row);
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/audit',
      auth: 'tenant',
      summary: 'Audit events, newest first: who did what to which resource, with the result',
      query: AuditQuery,
      response: { status: 200, schema: z.object({ events: z.array(AuditEvent) }) },
    },
    async ({ query, principal }) => {
      let q = api.db.selectFrom('audit_events').selectAll().orderBy('id', 'desc').limit(query.limit);
      const only = tenantFilter(principal);
      if (only !== undefined) q = q.where('tenant_id', '=', only);
      if (query.tenant) {
        // A deleted tenant's trail is still asked for by id; names resolve while it exists.
        const id = query.tenant.startsWith('ten_')
          ? query.tenant
          : (await findTenantForPrincipal(api.db, principal, query.tenant)).id;
        q = q.where('tenant_id', '=', id);
      }
      if (query.action) q = q.where('action', '=', query.action);
      if (query.before) q = q.where('id', '<', query.before);
      const rows = await q.execute();
      return {
        events: rows.map(auditEventView),
      };
    },
  );
}

function keyView(
  r: {
    id: string;
    name: string;
    tenant_id: string | null;
    prefix: string;
    created_at: string;
    last_used_at: string | null;
  },
  tenantName: string,
): ApiKey {
  return {
    id: r.id,
    name: r.name,
    tenantId: r.tenant_id!,
    tenantName,
    prefix: r.prefix,
    createdAt: r.created_at,
    lastUsedAt: r.last_used_at,
  };
}
