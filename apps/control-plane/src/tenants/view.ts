import type { NetworkPolicy, Operation, OperationProgress, Tenant } from '@warren/protocol';
import type { OperationsTable, TenantsTable } from '../store/database.ts';

/** Database rows to API objects: the only place that knows both shapes. */
export function tenantView(row: TenantsTable, hostHealthy: boolean): Tenant {
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
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
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
