import {
  Backup,
  BackupId,
  BackupList,
  BackupPolicy,
  CreateBackupRequest,
  parseOrThrow,
  RestoreBackupRequest,
  TenantOperationResponse,
  VerifyResult,
  WarrenError,
} from '@warren/protocol';
import type { Api } from '../context.ts';

/**
 * Backups of a tenant (`/v1/tenants/{t}/backups`) and its backup policy. The control plane
 * keeps the catalog; host agents run the jobs. Scoped like every tenant route: a tenant key
 * sees its own tenant's backups only, and another tenant's backup id is NOT_FOUND.
 */
export function backupRoutes(api: Api): void {
  const backupId = (raw: string | undefined) => parseOrThrow(BackupId, raw);

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/backups',
      auth: 'tenant',
      summary:
        "Back up the tenant's data volume (and root disk with includeRoot) to the object store, encrypted; answers at once with the running backup, whose progress GET shows",
      body: CreateBackupRequest,
      response: { status: 202, schema: Backup },
      audit: 'tenant.backup.create',
    },
    async ({ tenant, body, audit }) => {
      const b = await api.backups.create(tenant!, body);
      audit.target = `${tenant!.name}:${b.id}`;
      return b;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/backups',
      auth: 'tenant',
      summary:
        "List the tenant's backups, newest first (running and failed ones too; only complete ones restore)",
      response: { status: 200, schema: BackupList },
    },
    async ({ tenant }) => ({ backups: await api.backups.list(tenant!) }),
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/backups/:backup',
      auth: 'tenant',
      summary: 'One backup, with its progress while it runs',
      response: { status: 200, schema: Backup },
    },
    async ({ tenant, params }) => api.backups.get(tenant!, backupId(params.backup)),
  );

  api.route(
    {
      method: 'DELETE',
      url: '/v1/tenants/:tenant/backups/:backup',
      auth: 'tenant',
      summary:
        'Delete a backup (its catalog entry and manifest; chunks no other backup uses go at the next GC)',
      response: { status: 204 },
      audit: 'tenant.backup.delete',
    },
    async ({ tenant, params, audit }) => {
      const id = backupId(params.backup);
      audit.target = `${tenant!.name}:${id}`;
      await api.backups.delete(tenant!, id);
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/backups/:backup/restore',
      auth: 'tenant',
      summary:
        "Restore a complete backup into the tenant (its volumes replaced, its VM restarted) or, with newTenant (admin only), into a new tenant made like the backup's; answers with the restore operation",
      body: RestoreBackupRequest,
      response: { status: 202, schema: TenantOperationResponse },
      audit: 'tenant.backup.restore',
    },
    async ({ tenant, params, body, principal, audit }) => {
      const id = backupId(params.backup);
      audit.target = `${tenant!.name}:${id}${body.newTenant ? `->${body.newTenant}` : ''}`;
      // A new tenant is a new tenant: only the admin creates those (quota, placement, keys).
      if (body.newTenant !== undefined && principal?.kind !== 'admin') {
        throw new WarrenError(
          'FORBIDDEN',
          'restoring into a new tenant creates one, which needs the admin token; restore into this tenant instead, or ask an admin',
        );
      }
      return api.backups.restore(tenant!, id, body.newTenant);
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/backups/:backup/verify',
      auth: 'tenant',
      summary:
        'Read a backup back from the object store (manifest and every chunk) and check each; problems name the object',
      response: { status: 200, schema: VerifyResult },
      audit: 'tenant.backup.verify',
    },
    async ({ tenant, params, audit }) => {
      const id = backupId(params.backup);
      audit.target = `${tenant!.name}:${id}`;
      return api.backups.verify(tenant!, id);
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/backups/:backup/drill',
      auth: 'admin',
      summary:
        "Start a restore drill of a complete backup: restored into a scratch tenant, booted, a sample of its files' digests in the guest compared with the host's reading of the restored volume, the scratch tenant deleted; answers at once with the backup, whose `drill` GET shows",
      response: { status: 202, schema: Backup },
      audit: 'tenant.backup.drill',
    },
    async ({ tenant, params, audit }) => {
      const id = backupId(params.backup);
      audit.target = `${tenant!.name}:${id}`;
      return api.backups.drills.start(tenant!, id);
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/backup-policy',
      auth: 'tenant',
      summary: "The tenant's backup schedule and retention (defaults, no schedule, until set)",
      response: { status: 200, schema: BackupPolicy },
    },
    async ({ tenant }) => api.backups.schedule.getPolicy(tenant!),
  );

  api.route(
    {
      method: 'PUT',
      url: '/v1/tenants/:tenant/backup-policy',
      auth: 'tenant',
      summary:
        "Set the tenant's backup schedule (everyMinutes) and retention (keepLast, keepHourly, keepDaily, keepWeekly); the scheduler deletes complete backups the rules do not keep",
      body: BackupPolicy,
      response: { status: 200, schema: BackupPolicy },
      audit: 'tenant.backup-policy.update',
    },
    async ({ tenant, body }) => api.backups.schedule.setPolicy(tenant!, body),
  );
}
