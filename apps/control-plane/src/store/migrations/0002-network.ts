import type { Kysely } from 'kysely';

/** Per-tenant network policy and dashboard port (issue: tenant network isolation). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .alterTable('tenants')
    .addColumn('egress_mode', 'text', (c) => c.notNull().defaultTo('internet'))
    .execute();
  // JSON array of {cidr, ports?}.
  await db.schema
    .alterTable('tenants')
    .addColumn('egress_allowlist', 'text', (c) => c.notNull().defaultTo('[]'))
    .execute();
  await db.schema.alterTable('tenants').addColumn('bandwidth_mbit', 'integer').execute();
  await db.schema
    .alterTable('tenants')
    .addColumn('dashboard_port', 'integer', (c) => c.notNull().defaultTo(8080))
    .execute();
}
