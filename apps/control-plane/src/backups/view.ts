import { randomBytes } from 'node:crypto';
import type { Backup, BackupDrill, BackupMetadata, BackupProgress } from '@warren/protocol';
import type { z } from 'zod';
import type { BackupsTable, TenantsTable } from '../store/database.ts';
import { networkOf } from '../tenants/view.ts';

/** Catalog rows to API objects, and the small shapes a backup job is built from. */

/**
 * A host's point in time as the catalog stores it (ISO 8601, UTC), so retention sorts and
 * buckets it right; anything else a host sends (it is not trusted with the catalog's shape)
 * becomes the time the backup was asked for.
 */
export function instant(reported: string, fallback: string): string {
  const t = reported.length <= 64 ? Date.parse(reported) : Number.NaN;
  return Number.isNaN(t) ? fallback : new Date(t).toISOString();
}

export function newBackupId(): string {
  return `bak_${randomBytes(8).toString('hex')}`;
}

export function progressOf(p: BackupProgress): { bytesTotal: number; bytesDone: number } {
  return { bytesTotal: p.bytesTotal, bytesDone: p.bytesDone };
}

/** What a restore into a new tenant needs of this one; it travels in the manifest too. */
export function metadataOf(t: TenantsTable): BackupMetadata {
  return {
    tenantId: t.id,
    tenantName: t.name,
    imageId: t.image_id,
    resources: {
      vcpus: t.vcpus,
      memoryMiB: t.memory_mib,
      diskMiB: t.disk_mib,
      quota: { vcpus: t.quota_vcpus, memoryMiB: t.quota_memory_mib, diskMiB: t.quota_disk_mib },
      dashboardPort: t.dashboard_port,
    },
    network: networkOf(t),
  };
}

/** A create request for a clone: the backup's image, resources and network (the source's quota when the metadata lacks one). */
export function createRequestOf(
  name: string,
  m: BackupMetadata,
  source: TenantsTable,
): z.input<typeof import('@warren/protocol').CreateTenantRequest> {
  const r = m.resources as {
    vcpus?: number;
    memoryMiB?: number;
    diskMiB?: number;
    quota?: { vcpus: number; memoryMiB: number; diskMiB: number };
    dashboardPort?: number;
  };
  return {
    name,
    image: m.imageId,
    vcpus: r.vcpus ?? source.vcpus,
    memoryMiB: r.memoryMiB ?? source.memory_mib,
    diskMiB: r.diskMiB ?? source.disk_mib,
    quota: r.quota ?? {
      vcpus: source.quota_vcpus,
      memoryMiB: source.quota_memory_mib,
      diskMiB: source.quota_disk_mib,
    },
    ...(m.network ? { network: m.network as never } : {}),
    ...(r.dashboardPort ? { dashboardPort: r.dashboardPort } : {}),
  };
}

export function backupView(r: BackupsTable): Backup {
  let progress: BackupProgress | null = null;
  try {
    progress = r.progress === null ? null : (JSON.parse(r.progress) as BackupProgress);
  } catch {
    progress = null;
  }
  return {
    id: r.id,
    tenantId: r.tenant_id,
    tenantName: r.tenant_name,
    state: r.state as Backup['state'],
    trigger: r.trigger as Backup['trigger'],
    includeRoot: r.include_root === 1,
    createdAt: r.created_at,
    completedAt: r.completed_at,
    pointInTime: r.point_in_time,
    sizeBytes: r.size_bytes,
    storedBytes: r.stored_bytes,
    mode: r.mode as Backup['mode'],
    progress,
    error: r.error_code === null ? null : { code: r.error_code, message: r.error_message ?? '' },
    ...(r.drill_state === null
      ? {}
      : {
          drill: {
            state: r.drill_state as BackupDrill['state'],
            at: r.drill_at ?? r.created_at,
            filesChecked: r.drill_files ?? 0,
            error:
              r.drill_error_code === null
                ? null
                : { code: r.drill_error_code, message: r.drill_error_message ?? '' },
          },
        }),
  };
}
