import { type Kysely, sql } from 'kysely';

/**
 * Safe-YOLO sessions (`/v1/tenants/{t}/sessions`): a run between a clean snapshot and a revert
 * to it. The row holds no credential, ever: those go to the host agent, which keeps them in
 * memory and in the guest's tmpfs only. A session goes with its tenant (cascade).
 *
 * "One active session per tenant" is a partial unique index, which SQLite and PostgreSQL both
 * have: the database refuses a second one however two requests interleave.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('tenant_sessions')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('tenant_id', 'text', (c) => c.notNull().references('tenants.id').onDelete('cascade'))
    .addColumn('snapshot', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('outcome', 'text')
    .addColumn('error_code', 'text')
    .addColumn('error_message', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'text', (c) => c.notNull())
    .addColumn('ended_at', 'text')
    .execute();
  await db.schema
    .createIndex('tenant_sessions_one_active')
    .on('tenant_sessions')
    .column('tenant_id')
    .unique()
    .where(sql.ref('state'), 'in', [sql.lit('active'), sql.lit('ending')])
    .execute();
  await db.schema
    .createIndex('tenant_sessions_tenant')
    .on('tenant_sessions')
    .columns(['tenant_id', 'created_at'])
    .execute();
  await db.schema
    .createIndex('tenant_sessions_expiry')
    .on('tenant_sessions')
    .columns(['state', 'expires_at'])
    .execute();
}
