import type { Kysely } from 'kysely';

/**
 * Restore drills (issue 12): each backup keeps the outcome of its last drill, and, while one
 * runs, the name of the scratch tenant it restores into, so that a control plane that restarts
 * mid-drill finds that tenant again and deletes it.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const [column, type] of [
    ['drill_state', 'text'],
    ['drill_at', 'text'],
    ['drill_files', 'integer'],
    ['drill_error_code', 'text'],
    ['drill_error_message', 'text'],
    ['drill_tenant', 'text'],
  ] as const)
    await db.schema.alterTable('backups').addColumn(column, type).execute();
  await db.schema.createIndex('backups_drill_state').on('backups').column('drill_state').execute();
}
