import type { Kysely } from 'kysely';

/**
 * Idle reclamation, failed starts and orphan quarantine (issue 13).
 *
 * tenants: `idle_timeout_ms` is the tenant's own idle timeout (null: the platform default,
 * 0: never); `attempts_count` and `next_attempt_at` are the failed start attempts its host last
 * reported (null count: none reported; null next: the host gave up).
 *
 * hosts: `susp_*` is what the host's suspended tenants hold of its booking. It is recomputed
 * from the tenants' states in every heartbeat transaction (never moved by a delta), so it
 * cannot drift; placement counts it as free memory and vCPUs.
 *
 * quarantined_vms: each host's orphan VMs as its last heartbeat listed them (replaced whole).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const [column, type] of [
    ['idle_timeout_ms', 'integer'],
    ['attempts_count', 'integer'],
    ['next_attempt_at', 'text'],
  ] as const)
    await db.schema.alterTable('tenants').addColumn(column, type).execute();
  for (const column of ['susp_tenants', 'susp_vcpus', 'susp_memory_mib'])
    await db.schema
      .alterTable('hosts')
      .addColumn(column, 'integer', (c) => c.notNull().defaultTo(0))
      .execute();
  await db.schema
    .createTable('quarantined_vms')
    .addColumn('host_id', 'text', (c) => c.notNull().references('hosts.id').onDelete('cascade'))
    .addColumn('vm_id', 'text', (c) => c.notNull())
    .addColumn('tenant_id', 'text', (c) => c.notNull())
    .addColumn('image_id', 'text', (c) => c.notNull())
    .addColumn('vcpus', 'integer', (c) => c.notNull())
    .addColumn('memory_mib', 'integer', (c) => c.notNull())
    .addColumn('disk_mib', 'integer', (c) => c.notNull())
    .addColumn('quarantined_at', 'text', (c) => c.notNull())
    .addColumn('remove_after', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('quarantined_vms_pk', ['host_id', 'vm_id'])
    .execute();
}
