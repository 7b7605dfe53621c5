import {
  CreateTenantRequest,
  ListTenantsQuery,
  parseSkillRef,
  Tenant,
  TenantOperationResponse,
  UpdateTenantRequest,
  WarrenError,
} from '@warren/protocol';
import { z } from 'zod';
import { tenantFilter } from '../../tenants/scope.ts';
import type { Api } from '../context.ts';

function skillNames(refs: string[]): string[] {
  return refs.map((r) => parseSkillRef(r)?.name).filter((n): n is string => n !== undefined);
}

export function tenantRoutes(api: Api): void {
  api.route(
    {
      method: 'POST',
      url: '/v1/tenants',
      auth: 'admin',
      summary: 'Create a tenant: validate, check quotas, place it on a host, and start its VM',
      body: CreateTenantRequest,
      response: { status: 202, schema: TenantOperationResponse },
      audit: 'tenant.create',
    },
    async ({ body, audit }) => {
      audit.target = body.name;
      if (body.skills) await api.skills.checkRefs(body.skills);
      if (body.config) await api.skills.checkValues(body.config, skillNames(body.skills ?? []));
      const result = await api.tenants.create(body);
      audit.tenantId = result.tenant.id;
      return result;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants',
      auth: 'tenant',
      summary: 'List tenants (a tenant key sees only its own)',
      query: ListTenantsQuery,
      response: { status: 200, schema: z.object({ tenants: z.array(Tenant) }) },
    },
    async ({ query, principal }) => ({ tenants: await api.tenants.list(query, tenantFilter(principal)) }),
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant',
      auth: 'tenant',
      summary: 'Show one tenant by id or name',
      response: { status: 200, schema: Tenant },
    },
    async ({ tenant }) => api.tenants.view(tenant!),
  );

  api.route(
    {
      method: 'PATCH',
      url: '/v1/tenants/:tenant',
      auth: 'tenant',
      summary:
        "Change a tenant's network policy or dashboard port (admin), or its idle timeout (admin or the tenant's key); applied without a restart",
      body: UpdateTenantRequest,
      response: { status: 200, schema: Tenant },
      audit: 'tenant.update',
    },
    async ({ tenant, body, principal }) => {
      // The network policy is the platform's boundary around the tenant, not the tenant's to move.
      if (principal?.kind !== 'admin' && (body.network !== undefined || body.dashboardPort !== undefined)) {
        throw new WarrenError(
          'FORBIDDEN',
          "a tenant key may change only its tenant's idleTimeout; the network policy and dashboard port need the admin token",
        );
      }
      if (principal?.kind !== 'admin' && (body.skills !== undefined || body.config !== undefined)) {
        throw new WarrenError(
          'FORBIDDEN',
          "a tenant's skills and configuration values are the platform's to set: they need the admin token",
        );
      }
      if (body.skills) await api.skills.checkRefs(body.skills);
      if (body.config) await api.skills.checkValues(body.config, skillNames(body.skills ?? []));
      return api.tenants.update(tenant!, body);
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/start',
      auth: 'tenant',
      summary: "Start the tenant's VM",
      response: { status: 202, schema: TenantOperationResponse },
      audit: 'tenant.start',
    },
    async ({ tenant }) => api.tenants.start(tenant!),
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/stop',
      auth: 'tenant',
      summary: "Stop the tenant's VM (its disks stay)",
      response: { status: 202, schema: TenantOperationResponse },
      audit: 'tenant.stop',
    },
    async ({ tenant }) => api.tenants.stop(tenant!),
  );

  api.route(
    {
      method: 'DELETE',
      url: '/v1/tenants/:tenant',
      auth: 'admin',
      summary: 'Delete a tenant: its VM, disks, keys and records (the audit trail stays)',
      response: { status: 202, schema: TenantOperationResponse },
      audit: 'tenant.delete',
    },
    async ({ tenant }) => {
      if (!tenant) throw new WarrenError('NOT_FOUND', 'no such tenant');
      return api.tenants.delete(tenant);
    },
  );
}
