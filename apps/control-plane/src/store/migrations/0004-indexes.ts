import type { Kysely } from 'kysely';

/**
 * Indexes the benchmarks asked for: the operation sweeper filters by status and age every
 * few seconds, and deleting a tenant or host cascades into api_keys by those columns.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createIndex('operations_status_created')
    .on('operations')
    .columns(['status', 'created_at'])
    .execute();
  await db.schema.createIndex('api_keys_tenant').on('api_keys').column('tenant_id').execute();
  await db.schema.createIndex('api_keys_host').on('api_keys').column('host_id').execute();
}
