import type { Kysely } from 'kysely';

/**
 * One-time login codes for the dashboard origins (`<tenant>.<WARREN_DASHBOARD_DOMAIN>`): the
 * API hands one out, the browser redeems it once on the tenant's own origin for a session
 * cookie there. Only the SHA-256 of a code is stored; like a session, a code belongs to the key
 * that asked for it (revoking the key deletes it) and opens one tenant.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('dashboard_logins')
    .addColumn('code_hash', 'text', (c) => c.primaryKey())
    .addColumn('key_id', 'text', (c) => c.notNull().references('api_keys.id').onDelete('cascade'))
    .addColumn('tenant_id', 'text', (c) => c.notNull().references('tenants.id').onDelete('cascade'))
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema
    .createIndex('dashboard_logins_expiry')
    .on('dashboard_logins')
    .column('expires_at')
    .execute();
}
