import {
  CreatedSnapshot,
  CreateSnapshotRequest,
  parseOrThrow,
  RevertResult,
  SnapshotList,
  SnapshotName,
  WarrenError,
} from '@warren/protocol';
import type { TenantsTable } from '../../store/database.ts';
import type { Api } from '../context.ts';

/**
 * Snapshots of a tenant's VM (`/v1/tenants/{t}/snapshots`). The host agent keeps them and is
 * the source of truth; create, revert and delete hold the tenant's lock, so they never
 * interleave with each other or with a session's start and end.
 */
export function snapshotRoutes(api: Api): void {
  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/snapshots',
      auth: 'tenant',
      summary:
        "Snapshot the tenant's running VM (memory, devices, root disk and data volume at one point); counts against its disk quota",
      body: CreateSnapshotRequest,
      response: { status: 201, schema: CreatedSnapshot },
      audit: 'tenant.snapshot.create',
    },
    async ({ tenant, body, audit }) => {
      if (body.name) audit.target = `${tenant!.name}:${body.name}`;
      const created = await api.locks.with(tenant!, 'snapshot', async () => {
        if (body.name) await refuseSessionSnapshot(tenant!, body.name, 'replace');
        return api.snapshots.create(await api.snapshots.fresh(tenant!), body);
      });
      audit.target = `${tenant!.name}:${created.snapshot.name}`;
      return created;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/snapshots',
      auth: 'tenant',
      summary: "List the tenant's snapshots (also while it is stopped, as long as its host answers)",
      response: { status: 200, schema: SnapshotList },
    },
    async ({ tenant }) => ({ snapshots: await api.snapshots.list(tenant!) }),
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/snapshots/:snapshot/revert',
      auth: 'tenant',
      summary:
        "Revert the tenant's running VM to a snapshot: its processes, memory and both disks as they were then",
      response: { status: 200, schema: RevertResult },
      audit: 'tenant.snapshot.revert',
    },
    async ({ tenant, params, audit }) => {
      const name = parseOrThrow(SnapshotName, params.snapshot);
      audit.target = `${tenant!.name}:${name}`;
      return api.locks.with(tenant!, 'revert', async () =>
        api.snapshots.revert(await api.snapshots.fresh(tenant!), name),
      );
    },
  );

  api.route(
    {
      method: 'DELETE',
      url: '/v1/tenants/:tenant/snapshots/:snapshot',
      auth: 'tenant',
      summary: "Delete one of the tenant's snapshots and free its disk space",
      response: { status: 204 },
      audit: 'tenant.snapshot.delete',
    },
    async ({ tenant, params, audit }) => {
      const name = parseOrThrow(SnapshotName, params.snapshot);
      audit.target = `${tenant!.name}:${name}`;
      await api.locks.with(tenant!, 'snapshot delete', async () => {
        await refuseSessionSnapshot(tenant!, name, 'delete');
        await api.snapshots.delete(await api.snapshots.fresh(tenant!), name);
      });
    },
  );

  /** An active session's clean snapshot is what its end reverts to: nobody replaces or deletes it meanwhile. */
  async function refuseSessionSnapshot(tenant: TenantsTable, name: string, verb: string): Promise<void> {
    const active = (await api.tenantSessions.list(tenant)).find(
      (s) => (s.state === 'active' || s.state === 'ending') && s.snapshot === name,
    );
    if (active) {
      throw new WarrenError(
        'CONFLICT',
        `session ${active.id} reverts to snapshot ${name} when it ends, so it cannot ${verb} it; end the session first (\`warren tenant session end ${tenant.name} ${active.id}\`)`,
      );
    }
  }
}
