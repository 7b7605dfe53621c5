import type { ControlPlaneConfig } from './config.ts';
import { now } from './ids.ts';
import type { Db } from './store/index.ts';

/** Rows deleted per statement, and statements per table per pass: short write transactions. */
const BATCH = 1000;
const BATCHES_PER_PASS = 10;
const DAY_MS = 24 * 3600_000;

/**
 * Keeps the history tables from growing forever: audit events older than
 * WARREN_AUDIT_RETENTION_DAYS, operations finished and backups failed longer than
 * WARREN_OPERATION_RETENTION_DAYS ago, and expired join tokens. Each delete walks an index (audit_at, operations_status_updated),
 * in batches, so a pass with nothing to do costs an index probe and a large backlog is worked
 * off over several passes without holding the write lock for long.
 */
export async function pruneHistory(db: Db, config: ControlPlaneConfig): Promise<void> {
  const auditCutoff = new Date(Date.now() - config.auditRetentionDays * DAY_MS).toISOString();
  await inBatches(async () => {
    const r = await db
      .deleteFrom('audit_events')
      .where('id', 'in', (eb) =>
        eb.selectFrom('audit_events').select('id').where('at', '<', auditCutoff).limit(BATCH),
      )
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  });
  const opCutoff = new Date(Date.now() - config.operationRetentionDays * DAY_MS).toISOString();
  await inBatches(async () => {
    const r = await db
      .deleteFrom('operations')
      .where('id', 'in', (eb) =>
        eb
          .selectFrom('operations')
          .select('id')
          .where('status', 'in', ['succeeded', 'failed'])
          .where('updated_at', '<', opCutoff)
          .limit(BATCH),
      )
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  });
  // Failed backups are listed for a while so their error can be read, then go like finished
  // operations (they count against WARREN_TENANT_MAX_BACKUPS); what they uploaded is GC's.
  await inBatches(async () => {
    const r = await db
      .deleteFrom('backups')
      .where('id', 'in', (eb) =>
        eb
          .selectFrom('backups')
          .select('id')
          .where('state', '=', 'failed')
          .where('completed_at', '<', opCutoff)
          .limit(BATCH),
      )
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  });
  // Refused once expired anyway (auth/principal.ts); this only keeps the list short.
  await db.deleteFrom('api_keys').where('expires_at', '<=', now()).execute();
}

async function inBatches(run: () => Promise<number>): Promise<void> {
  for (let i = 0; i < BATCHES_PER_PASS; i++) if ((await run()) < BATCH) return;
}
