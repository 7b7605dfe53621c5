import type { SelectQueryBuilder } from 'kysely';
import type { ControlPlaneConfig } from '../config.ts';
import type { Database, HostsTable } from '../store/database.ts';

/**
 * The one definition of a healthy host: it reports `ok` and its last heartbeat is newer than
 * WARREN_HEARTBEAT_TIMEOUT_MS. Used in SQL (scheduler, image resolution, tenant views) and in
 * code (API views, exec and dashboard routes) alike.
 */
export function healthySince(config: Pick<ControlPlaneConfig, 'heartbeatTimeoutMs'>): string {
  return new Date(Date.now() - config.heartbeatTimeoutMs).toISOString();
}

export function whereHealthy<O>(
  qb: SelectQueryBuilder<Database, 'hosts', O>,
  since: string,
): SelectQueryBuilder<Database, 'hosts', O> {
  return qb.where('health', '=', 'ok').where('last_heartbeat_at', '>=', since);
}

export function isHealthy(row: Pick<HostsTable, 'health' | 'last_heartbeat_at'>, since: string): boolean {
  return row.health === 'ok' && row.last_heartbeat_at !== null && row.last_heartbeat_at >= since;
}
