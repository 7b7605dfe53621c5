import type { Kysely } from 'kysely';

/**
 * Shared skill packages, their channels, configuration templates (issue 14).
 *
 * skill_packages: one row per name@version, immutable once written; `digest` names the bundle
 * in the object store (`skills/sha256/<hex>`).
 * skill_channels: what a channel (`stable`) of a package points at, and its staged rollout.
 * config_templates: every version of each platform-wide template (a JSON object), newest wins.
 * tenants: `skills` (JSON array of `name@version|channel` references), `config_values` (JSON
 * object: file name -> the tenant's own object) and `config_version` (grows with each change
 * of the values).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('skill_packages')
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('version', 'text', (c) => c.notNull())
    .addColumn('digest', 'text', (c) => c.notNull())
    .addColumn('size_bytes', 'integer', (c) => c.notNull())
    .addColumn('skills', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('skill_packages_pk', ['name', 'version'])
    .execute();
  await db.schema
    .createTable('skill_channels')
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('channel', 'text', (c) => c.notNull())
    .addColumn('version', 'text', (c) => c.notNull())
    .addColumn('previous_version', 'text')
    .addColumn('rollout_percent', 'integer', (c) => c.notNull())
    .addColumn('generation', 'integer', (c) => c.notNull())
    .addColumn('apply', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('skill_channels_pk', ['name', 'channel'])
    .execute();
  await db.schema
    .createTable('config_templates')
    .addColumn('file', 'text', (c) => c.notNull())
    .addColumn('version', 'integer', (c) => c.notNull())
    .addColumn('body', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('config_templates_pk', ['file', 'version'])
    .execute();
  await db.schema
    .alterTable('tenants')
    .addColumn('skills', 'text', (c) => c.notNull().defaultTo('[]'))
    .execute();
  await db.schema
    .alterTable('tenants')
    .addColumn('config_values', 'text', (c) => c.notNull().defaultTo('{}'))
    .execute();
  await db.schema
    .alterTable('tenants')
    .addColumn('config_version', 'integer', (c) => c.notNull().defaultTo(0))
    .execute();
}
