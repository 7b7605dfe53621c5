import type { Kysely } from 'kysely';

/**
 * Browser sessions of the web console (`/console/`): an admin token or a tenant key is
 * exchanged once for a random session id held in an HttpOnly cookie. Only the id's SHA-256 is
 * stored; the session acts as the key that opened it (revoking the key deletes its sessions),
 * until it expires or is signed out.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('console_sessions')
    .addColumn('id_hash', 'text', (c) => c.primaryKey())
    .addColumn('key_id', 'text', (c) => c.notNull().references('api_keys.id').onDelete('cascade'))
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema
    .createIndex('console_sessions_expiry')
    .on('console_sessions')
    .column('expires_at')
    .execute();
}
