import { type Kysely, sql } from 'kysely';
import type { StoreDialect } from '../dialect.ts';

/** The first schema: tenants, hosts, credentials, operations, audit events. */
export async function up(db: Kysely<unknown>, dialect: StoreDialect): Promise<void> {
  await db.schema
    .createTable('hosts')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('address', 'text', (c) => c.notNull())
    .addColumn('agent_token', 'text', (c) => c.notNull())
    .addColumn('cap_vcpus', 'integer', (c) => c.notNull())
    .addColumn('cap_memory_mib', 'integer', (c) => c.notNull())
    .addColumn('cap_disk_mib', 'integer', (c) => c.notNull())
    .addColumn('alloc_vcpus', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('alloc_memory_mib', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('alloc_disk_mib', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('health', 'text', (c) => c.notNull())
    .addColumn('draining', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('agent_version', 'text', (c) => c.notNull())
    .addColumn('images', 'text', (c) => c.notNull())
    .addColumn('last_heartbeat_at', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    // Capacity may shrink below allocation (an agent reports less), so only the sign is
    // checked here; placement itself never books beyond capacity (see scheduler/).
    .addCheckConstraint(
      'hosts_alloc_not_negative',
      sql`alloc_vcpus >= 0 and alloc_memory_mib >= 0 and alloc_disk_mib >= 0`,
    )
    .execute();

  await db.schema
    .createTable('tenants')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('desired_state', 'text', (c) => c.notNull())
    .addColumn('generation', 'integer', (c) => c.notNull())
    .addColumn('observed_generation', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('image_id', 'text', (c) => c.notNull())
    .addColumn('vcpus', 'integer', (c) => c.notNull())
    .addColumn('memory_mib', 'integer', (c) => c.notNull())
    .addColumn('disk_mib', 'integer', (c) => c.notNull())
    .addColumn('quota_vcpus', 'integer', (c) => c.notNull())
    .addColumn('quota_memory_mib', 'integer', (c) => c.notNull())
    .addColumn('quota_disk_mib', 'integer', (c) => c.notNull())
    .addColumn('host_id', 'text', (c) => c.references('hosts.id'))
    .addColumn('last_error_code', 'text')
    .addColumn('last_error_message', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('tenants_host').on('tenants').column('host_id').execute();

  await db.schema
    .createTable('api_keys')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('tenant_id', 'text', (c) => c.references('tenants.id').onDelete('cascade'))
    .addColumn('host_id', 'text', (c) => c.references('hosts.id').onDelete('cascade'))
    .addColumn('token_hash', 'text', (c) => c.notNull().unique())
    .addColumn('prefix', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('last_used_at', 'text')
    .execute();

  await db.schema
    .createTable('operations')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull())
    // No foreign key: a finished delete operation outlives its tenant.
    .addColumn('tenant_id', 'text', (c) => c.notNull())
    .addColumn('tenant_name', 'text', (c) => c.notNull())
    .addColumn('generation', 'integer', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('error_code', 'text')
    .addColumn('error_message', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema
    .createIndex('operations_tenant')
    .on('operations')
    .columns(['tenant_id', 'status'])
    .execute();

  await db.schema
    .createTable('audit_events')
    .addColumn('id', 'integer', (c) =>
      dialect.autoIncrement === 'rowid'
        ? c.primaryKey().autoIncrement()
        : c.primaryKey().generatedAlwaysAsIdentity(),
    )
    .addColumn('at', 'text', (c) => c.notNull())
    .addColumn('actor', 'text', (c) => c.notNull())
    .addColumn('action', 'text', (c) => c.notNull())
    .addColumn('target', 'text', (c) => c.notNull())
    // No foreign key: the audit trail outlives the tenant it is about.
    .addColumn('tenant_id', 'text')
    .addColumn('result', 'text', (c) => c.notNull())
    .addColumn('status', 'integer', (c) => c.notNull())
    .addColumn('request_id', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('audit_tenant').on('audit_events').columns(['tenant_id', 'id']).execute();
}
