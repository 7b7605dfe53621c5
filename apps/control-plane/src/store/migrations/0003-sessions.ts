import type { Kysely } from 'kysely';

/**
 * Browser sessions for the dashboard proxy. Only the SHA-256 of the session id is stored, like
 * tokens. A session belongs to the key that opened it (revoking the key, or rotating the admin
 * token, deletes its sessions with it) and opens one tenant's dashboard.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('sessions')
    .addColumn('id_hash', 'text', (c) => c.primaryKey())
    .addColumn('key_id', 'text', (c) => c.notNull().references('api_keys.id').onDelete('cascade'))
    .addColumn('tenant_id', 'text', (c) => c.notNull().references('tenants.id').onDelete('cascade'))
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('sessions_key').on('sessions').column('key_id').execute();
  await db.schema.createIndex('sessions_expiry').on('sessions').column('expires_at').execute();
}
