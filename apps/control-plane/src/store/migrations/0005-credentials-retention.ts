import { type Kysely, sql } from 'kysely';
import { displayPrefixLength } from '../../auth/tokens.ts';
import type { CredentialKind } from '../database.ts';

/**
 * Credentials and history, after a review (issue 9):
 *
 * - Stored token prefixes are cut back to the kind prefix and the few characters
 *   `displayPrefix` shows. Until now it cut at the token's last `_`, which base64url bodies
 *   contain, so about half of the stored "prefixes" held most of the token. Only the prefix
 *   is stored, so the safe form is its beginning: that part was the token's beginning too.
 * - Join tokens can be single-use (consumed by the join that uses them), bound to one host
 *   (an admin's re-join of a host that lost its credentials) and expire. `bootstrap` marks
 *   the admin and join tokens whose plaintext is in a state file, the ones a restart replaces
 *   when the file is lost; every such token so far came from there.
 * - Indexes for pruning the audit log by time and finished operations by age.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const kind of ['admin', 'tenant', 'host', 'join'] as const satisfies CredentialKind[]) {
    const length = displayPrefixLength(kind);
    await sql`update api_keys set prefix = substr(prefix, 1, ${length})
      where kind = ${kind} and length(prefix) > ${length}`.execute(db);
  }
  await db.schema
    .alterTable('api_keys')
    .addColumn('single_use', 'integer', (c) => c.notNull().defaultTo(0))
    .execute();
  await db.schema
    .alterTable('api_keys')
    .addColumn('bootstrap', 'integer', (c) => c.notNull().defaultTo(0))
    .execute();
  await db.schema.alterTable('api_keys').addColumn('expires_at', 'text').execute();
  await sql`update api_keys set bootstrap = 1 where kind in ('admin', 'join')`.execute(db);
  await db.schema.createIndex('audit_at').on('audit_events').column('at').execute();
  await db.schema
    .createIndex('operations_status_updated')
    .on('operations')
    .columns(['status', 'updated_at'])
    .execute();
}
