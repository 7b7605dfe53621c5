import { type Kysely, sql } from 'kysely';

/**
 * Tenant secrets (issue 14).
 *
 * tenant_secrets: one row per secret, its value sealed (AES-256-GCM) under a key of its own that
 * is stored only wrapped by the platform master key (envelope encryption; the master key is a
 * file, never in the database); both bound to the tenant id, the name and the version, so a
 * row copied to another tenant, name or version does not open. Goes with its tenant (cascade).
 *
 * tenants.secrets_generation: grows at every set or remove of one of the tenant's secrets; the
 * desired list carries it, and a host agent fetches the values when it changed.
 *
 * platform_keys: keys of the platform's own, wrapped by the master key. `image-seed` is what
 * backup image keys are derived from; absent until the first master-key rotation, which stores
 * the old master key here so image-keyed backup chunks still open afterwards.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('tenant_secrets')
    .addColumn('tenant_id', 'text', (c) => c.notNull().references('tenants.id').onDelete('cascade'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('version', 'integer', (c) => c.notNull())
    /** The value's key, wrapped: `v1.<master key fingerprint>.<base64 nonce|key|tag>`. */
    .addColumn('wrapped_key', 'text', (c) => c.notNull())
    /** The value, sealed under that key: base64 nonce|ciphertext|tag. */
    .addColumn('sealed', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('tenant_secrets_pk', ['tenant_id', 'name'])
    .addCheckConstraint('tenant_secrets_version', sql`version >= 1`)
    .execute();
  await db.schema
    .alterTable('tenants')
    .addColumn('secrets_generation', 'integer', (c) => c.notNull().defaultTo(0))
    .execute();
  await db.schema
    .createTable('platform_keys')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('wrapped', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
}
