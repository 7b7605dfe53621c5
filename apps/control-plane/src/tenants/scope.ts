import { WarrenError } from '@warren/protocol';
import type { Principal } from '../auth/principal.ts';
import type { TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';

/**
 * The one place that decides which tenants a principal can see. A tenant key sees only its
 * own tenant; for anything else the answer is the same 404 as for a tenant that does not
 * exist, so a key cannot learn which names are taken.
 */
export async function findTenantForPrincipal(
  db: Db,
  principal: Principal | undefined,
  ref: string,
): Promise<TenantsTable> {
  const column = ref.startsWith('ten_') ? 'id' : 'name';
  let q = db.selectFrom('tenants').selectAll().where(column, '=', ref);
  const only = tenantFilter(principal);
  if (only !== undefined) q = q.where('id', '=', only);
  const row = await q.executeTakeFirst();
  if (!row) throw new WarrenError('NOT_FOUND', `no tenant ${ref}`);
  return row;
}

/** The tenant id a principal is confined to, or undefined for the admin (unless its session names one). */
export function tenantFilter(principal: Principal | undefined): string | undefined {
  if (principal?.kind === 'admin') return principal.onlyTenantId;
  if (principal?.kind === 'tenant') return principal.tenantId;
  // Hosts and anonymous callers never reach tenant routes; confine them to nothing anyway.
  return 'ten_none';
}
