import { BackupPolicy, WarrenError } from '@warren/protocol';
import { toWarrenError } from '../api/errors.ts';
import type { ControlPlaneConfig } from '../config.ts';
import { now } from '../ids.ts';
import type { TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import type { TenantLocks } from '../tenants/concurrency.ts';
import { pruneSelection } from './retention.ts';
import type { BackupService } from './service.ts';

/**
 * Backup policies and the scheduler's pass: due backups started, complete backups the keep
 * rules no longer keep pruned, GC run after prunes and periodically, a restore drill started
 * when one is due (drill.ts). The clock is the pass's
 * `at`, so tests drive time through `tick(at)` without sleeping.
 */
export class BackupSchedule {
  readonly #d: {
    db: Db;
    config: ControlPlaneConfig;
    locks: TenantLocks;
    log: (m: string) => void;
    backups: BackupService;
  };
  #lastGc = Date.now();
  /** Backups pruned since the last GC: their objects wait for it. */
  #prunedSinceGc = false;

  constructor(deps: {
    db: Db;
    config: ControlPlaneConfig;
    locks: TenantLocks;
    log: (m: string) => void;
    backups: BackupService;
  }) {
    this.#d = deps;
  }

  async getPolicy(tenant: Pick<TenantsTable, 'id'>): Promise<BackupPolicy> {
    const row = await this.#d.db
      .selectFrom('backup_policies')
      .selectAll()
      .where('tenant_id', '=', tenant.id)
      .executeTakeFirst();
    if (!row) return BackupPolicy.parse({});
    return {
      everyMinutes: row.every_minutes,
      keepLast: row.keep_last,
      keepHourly: row.keep_hourly,
      keepDaily: row.keep_daily,
      keepWeekly: row.keep_weekly,
    };
  }

  async setPolicy(tenant: Pick<TenantsTable, 'id'>, policy: BackupPolicy): Promise<BackupPolicy> {
    const min = this.#d.config.backupMinEveryMinutes;
    if (policy.everyMinutes !== null && policy.everyMinutes < min)
      throw new WarrenError(
        'QUOTA_EXCEEDED',
        `everyMinutes ${policy.everyMinutes} is more often than the platform allows (WARREN_BACKUP_MIN_EVERY_MINUTES = ${min}); ask for ${min} or more`,
        { details: { limit: 'platform.backupMinEveryMinutes', value: min } },
      );
    const values = {
      every_minutes: policy.everyMinutes,
      keep_last: policy.keepLast,
      keep_hourly: policy.keepHourly,
      keep_daily: policy.keepDaily,
      keep_weekly: policy.keepWeekly,
      updated_at: now(),
    };
    await this.#d.db
      .insertInto('backup_policies')
      .values({ tenant_id: tenant.id, ...values })
      .onConflict((oc) => oc.column('tenant_id').doUpdateSet(values))
      .execute();
    return this.getPolicy(tenant);
  }

  /**
   * One pass of the scheduler at time `at` (tests drive the clock through here): starts the
   * backups policies make due, prunes by their keep rules, and runs GC after a prune that
   * removed something (once WARREN_BACKUP_GC_MIN_INTERVAL_MS has passed since the last run) or
   * when WARREN_BACKUP_GC_INTERVAL_MS has.
   * Returns what it did, for tests and the log.
   */
  async tick(
    at: number = Date.now(),
  ): Promise<{ started: string[]; pruned: string[]; gc: boolean; drill?: string }> {
    const started: string[] = [];
    const pruned: string[] = [];
    const policies = await this.#d.db
      .selectFrom('backup_policies')
      .innerJoin('tenants', 'tenants.id', 'backup_policies.tenant_id')
      .selectAll('backup_policies')
      .select(['tenants.name as tenant_name', 'tenants.state as tenant_state'])
      .execute();
    for (const p of policies) {
      const tenant = { id: p.tenant_id, name: p.tenant_name };
      // A lost tenant (its host removed) has no VM to back up: its backups are what restores it.
      if (
        p.every_minutes !== null &&
        p.tenant_state !== 'lost' &&
        !this.#d.backups.gate.gcRunning &&
        !this.#d.locks.busy(p.tenant_id)
      ) {
        const last = await this.#d.db
          .selectFrom('backups')
          .select(['created_at', 'state'])
          .where('tenant_id', '=', p.tenant_id)
          .orderBy('created_at', 'desc')
          .executeTakeFirst();
        // One still running (longer than the interval) is let finish, not refused every pass.
        if (
          !last ||
          (last.state !== 'running' && Date.parse(last.created_at) <= at - p.every_minutes * 60_000)
        ) {
          try {
            const row = await this.#d.db
              .selectFrom('tenants')
              .selectAll()
              .where('id', '=', p.tenant_id)
              .executeTakeFirstOrThrow();
            const b = await this.#d.backups.create(row, { includeRoot: false }, 'scheduled');
            started.push(b.id);
            await this.#audit('tenant.backup.create', `${tenant.name}:${b.id}`, tenant.id, 202, 'ok');
          } catch (e) {
            const err = toWarrenError(e);
            this.#d.log(`scheduled backup of tenant ${tenant.name}: ${err.message}`);
            await this.#audit('tenant.backup.create', tenant.name, tenant.id, err.status, err.code);
          }
        }
      }
      const complete = await this.#d.db
        .selectFrom('backups')
        .select(['id', 'created_at', 'point_in_time'])
        .where('tenant_id', '=', p.tenant_id)
        .where('state', '=', 'complete')
        .execute();
      const policy = {
        keepLast: p.keep_last,
        keepHourly: p.keep_hourly,
        keepDaily: p.keep_daily,
        keepWeekly: p.keep_weekly,
      };
      for (const id of pruneSelection(
        complete.map((b) => ({ id: b.id, at: b.point_in_time ?? b.created_at })),
        policy,
      )) {
        if (!(await this.#d.backups.prune(id))) continue;
        await this.#audit('tenant.backup.prune', `${tenant.name}:${id}`, tenant.id, 204, 'ok');
        pruned.push(id);
      }
    }
    let gc = false;
    if (pruned.length > 0) this.#prunedSinceGc = true;
    const interval = this.#d.config.backupGcIntervalMs;
    const sinceGc = at - this.#lastGc;
    if (
      (this.#prunedSinceGc && sinceGc >= this.#d.config.backupGcMinIntervalMs) ||
      (interval > 0 && sinceGc >= interval)
    ) {
      gc = (await this.#d.backups.gc()).ran;
      if (gc) {
        this.#lastGc = at;
        this.#prunedSinceGc = false;
      }
    }
    const drill = await this.#d.backups.drills.due(at);
    return { started, pruned, gc, ...(drill ? { drill } : {}) };
  }

  #audit(action: string, target: string, tenantId: string, status: number, result: string): Promise<void> {
    return auditScheduler(this.#d.db, action, target, tenantId, status, result);
  }
}

/** An audit event of something the scheduler did (no request, no principal). */
export async function auditScheduler(
  db: Db,
  action: string,
  target: string,
  tenantId: string,
  status: number,
  result: string,
): Promise<void> {
  await db
    .insertInto('audit_events')
    .values({
      at: now(),
      actor: 'scheduler',
      action,
      target: target.slice(0, 200),
      tenant_id: tenantId,
      result,
      status,
      request_id: '-',
    })
    .execute()
    .catch(() => {});
}
