import { type Kysely, sql } from 'kysely';

/**
 * Backups (issue 12): the catalog of a tenant's backups, its backup key (only ever wrapped by
 * the platform master key, which is a file, never in the database), and its backup policy.
 * All three go with their tenant (cascade): deleting a tenant deletes its wrapped key, which
 * makes every object its backups left in the object store unreadable (crypto-shredding); GC
 * then removes them. Operations get the host job a restore runs as and its progress.
 *
 * "One running backup per tenant" is a partial unique index, as for sessions: the database
 * refuses a second one however two requests interleave.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('backups')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('tenant_id', 'text', (c) => c.notNull().references('tenants.id').onDelete('cascade'))
    .addColumn('tenant_name', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('trigger', 'text', (c) => c.notNull())
    .addColumn('include_root', 'integer', (c) => c.notNull())
    // No foreign key: a host that left does not take the catalog with it.
    .addColumn('host_id', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('completed_at', 'text')
    .addColumn('point_in_time', 'text')
    .addColumn('size_bytes', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('stored_bytes', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('mode', 'text')
    /** JSON BackupProgress; null until the host's first report. */
    .addColumn('progress', 'text')
    /** JSON BackupMetadata: what a restore into a new tenant creates it with. */
    .addColumn('metadata', 'text', (c) => c.notNull())
    .addColumn('error_code', 'text')
    .addColumn('error_message', 'text')
    .addCheckConstraint('backups_state', sql`state in ('running', 'complete', 'failed')`)
    .execute();
  await db.schema.createIndex('backups_tenant').on('backups').columns(['tenant_id', 'created_at']).execute();
  await db.schema
    .createIndex('backups_one_running')
    .on('backups')
    .column('tenant_id')
    .unique()
    .where(sql.ref('state'), '=', sql.lit('running'))
    .execute();
  await db.schema.createIndex('backups_state').on('backups').column('state').execute();

  await db.schema
    .createTable('tenant_keys')
    .addColumn('tenant_id', 'text', (c) => c.primaryKey().references('tenants.id').onDelete('cascade'))
    /** wrapTenantKey's output: `v1.<master key fingerprint>.<sealed key>`. */
    .addColumn('wrapped', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('backup_policies')
    .addColumn('tenant_id', 'text', (c) => c.primaryKey().references('tenants.id').onDelete('cascade'))
    .addColumn('every_minutes', 'integer')
    .addColumn('keep_last', 'integer', (c) => c.notNull())
    .addColumn('keep_hourly', 'integer', (c) => c.notNull())
    .addColumn('keep_daily', 'integer', (c) => c.notNull())
    .addColumn('keep_weekly', 'integer', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();

  await db.schema.alterTable('operations').addColumn('job', 'text').execute();
  await db.schema.alterTable('operations').addColumn('progress', 'text').execute();
}
