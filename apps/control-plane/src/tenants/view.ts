import {
  formatIdleTimeout,
  type NetworkPolicy,
  type Operation,
  type OperationProgress,
  type Tenant,
} from '@warren/protocol';
import type { OperationsTable, TenantsTable } from '../store/database.ts';

/** Database rows to API objects: the only place that knows both shapes. */
export function tenantView(row: TenantsTable, hostHealthy: boolean, defaultIdleMs: number | null): Tenant {
  const own = row.idle_timeout_ms ?? null;
  return {
    id: row.id,
    name: row.name,
    state: row.state as Tenant['state'],
    desiredState: row.desired_state as Tenant['desiredState'],
    imageId: row.image_id,
    vcpus: row.vcpus,
    memoryMiB: row.memory_mib,
    diskMiB: row.disk_mib,
    quota: { vcpus: row.quota_vcpus, memoryMiB: row.quota_memory_mib, diskMiB: row.quota_disk_mib },
    network: networkOf(row),
    dashboardPort: row.dashboard_port,
    hostId: row.host_id,
    hostHealthy,
    lastError:
      row.last_error_code === null
        ? null
        : { code: row.last_error_code, message: row.last_error_message ?? '' },
    attempts:
      row.attempts_count === null || row.attempts_count === undefined
        ? null
        : { count: row.attempts_count, nextAttemptAt: row.next_attempt_at ?? null },
    idleTimeout: {
      setting: own === null ? null : formatIdleTimeout(own === 0 ? null : own),
      effective: formatIdleTimeout(effectiveIdleTimeoutMs(row, defaultIdleMs)),
    },
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** The idle timeout that applies to a tenant: its own (0: never), else the platform default; null: never. */
export function effectiveIdleTimeoutMs(
  row: Pick<TenantsTable, 'idle_timeout_ms'>,
  defaultIdleMs: number | null,
): number | null {
  const own = row.idle_timeout_ms ?? null;
  if (own === null) return defaultIdleMs;
  return own === 0 ? null : own;
}

export function operationView(row: OperationsTable): Operation {
  return {
    id: row.id,
    kind: row.kind as Operation['kind'],
    tenantId: row.tenant_id,
    tenantName: row.tenant_name,
    status: row.status as Operation['status'],
    error: row.error_code === null ? null : { code: row.error_code, message: row.error_message ?? '' },
    ...(row.kind === 'restore' ? { progress: parseProgress(row.progress ?? null) } : {}),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export function networkOf(
  row: Pick<TenantsTable, 'egress_mode' | 'egress_allowlist' | 'bandwidth_mbit'>,
): NetworkPolicy {
  let allowlist: NetworkPolicy['allowlist'] = [];
  try {
    allowlist = JSON.parse(row.egress_allowlist);
  } catch {
    // A row written by this code always parses; anything else means no exceptions to the policy.
  }
  return {
    egress: row.egress_mode as NetworkPolicy['egress'],
    allowlist,
    bandwidthMbit: row.bandwidth_mbit,
  };
}

function parseProgress(json: string | null): OperationProgress | null {
  if (json === null) return null;
  try {
    const p = JSON.parse(json) as OperationProgress;
    return { bytesTotal: p.bytesTotal, bytesDone: p.bytesDone };
  } catch {
    return null;
  }
}

/** States in which calls that need a tenant's VM go to its host (see servesRequests). */
const SERVING_STATES = new Set(['running', 'suspended', 'starting']);

/**
 * Whether calls that need a tenant's VM (exec, files, dashboard, sessions) go to its host:
 * while it runs, while it is suspended (its host wakes it for the call; the caller sees only
 * latency), and while it starts or wakes (its host makes the call wait for that, bounded by
 * WARREN_WAKE_TIMEOUT_MS; the state the control plane read may lag the host's by a heartbeat).
 */
export function servesRequests(tenant: Pick<TenantsTable, 'state' | 'desired_state'>): boolean {
  return tenant.desired_state === 'running' && SERVING_STATES.has(tenant.state);
}
