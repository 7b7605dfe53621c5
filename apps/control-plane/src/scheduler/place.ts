import { type Resources, WarrenError } from '@warren/protocol';
import { whereHealthy } from '../hosts/health.ts';
import type { Db } from '../store/index.ts';
import { type HostCandidate, rank } from './policy.ts';

export interface PlacementRequest {
  resources: Resources;
  imageId: string;
  /** Hosts whose last heartbeat is older than this ISO time are not considered. */
  healthySince: string;
}

/**
 * Books capacity for one tenant on the best host, inside the caller's transaction.
 *
 * Double-booking is impossible even with several control-plane replicas on one database:
 * the booking is a single conditional UPDATE that only succeeds while the host still has
 * room, so two concurrent placements on the same host cannot both pass. The loser simply
 * tries the next candidate.
 *
 * Room for memory and vCPUs is capacity - booked + what suspended tenants hold (`susp_*`):
 * a suspended VM's memory is back with its host until something wakes it. Disk stays booked.
 */
export async function placeTenant(trx: Db, req: PlacementRequest): Promise<string> {
  const rows = await whereHealthy(
    trx
      .selectFrom('hosts')
      .select([
        'id',
        'images',
        'cap_vcpus',
        'cap_memory_mib',
        'cap_disk_mib',
        'alloc_vcpus',
        'alloc_memory_mib',
        'alloc_disk_mib',
        'susp_vcpus',
        'susp_memory_mib',
      ])
      .where('draining', '=', 0),
    req.healthySince,
  ).execute();
  const candidates: HostCandidate[] = rows
    .filter((r) => hasImage(r.images, req.imageId))
    .map((r) => ({
      id: r.id,
      capacity: { vcpus: r.cap_vcpus, memoryMiB: r.cap_memory_mib, diskMiB: r.cap_disk_mib },
      allocated: {
        vcpus: r.alloc_vcpus - r.susp_vcpus,
        memoryMiB: r.alloc_memory_mib - r.susp_memory_mib,
        diskMiB: r.alloc_disk_mib,
      },
    }));
  const r = req.resources;
  for (const host of rank(candidates, r)) {
    const booked = await trx
      .updateTable('hosts')
      .set((eb) => ({
        alloc_vcpus: eb('alloc_vcpus', '+', r.vcpus),
        alloc_memory_mib: eb('alloc_memory_mib', '+', r.memoryMiB),
        alloc_disk_mib: eb('alloc_disk_mib', '+', r.diskMiB),
      }))
      .where('id', '=', host.id)
      .where('draining', '=', 0)
      .where((eb) =>
        eb.and([
          eb(eb(eb('alloc_vcpus', '-', eb.ref('susp_vcpus')), '+', r.vcpus), '<=', eb.ref('cap_vcpus')),
          eb(
            eb(eb('alloc_memory_mib', '-', eb.ref('susp_memory_mib')), '+', r.memoryMiB),
            '<=',
            eb.ref('cap_memory_mib'),
          ),
          eb(eb('alloc_disk_mib', '+', r.diskMiB), '<=', eb.ref('cap_disk_mib')),
        ]),
      )
      .executeTakeFirst();
    if (Number(booked.numUpdatedRows) === 1) return host.id;
  }
  const why =
    rows.length === 0
      ? 'no healthy, non-draining host is registered'
      : candidates.length === 0
        ? `no healthy host has image ${req.imageId.slice(0, 19)}`
        : 'no healthy, non-draining host has that much free capacity';
  throw new WarrenError(
    'NO_CAPACITY',
    `cannot place ${r.vcpus} vCPU, ${r.memoryMiB} MiB memory, ${r.diskMiB} MiB disk: ${why}`,
    { details: { requested: r } },
  );
}

/** Gives capacity back when a tenant is gone. */
export async function releaseTenant(trx: Db, hostId: string, r: Resources): Promise<void> {
  await trx
    .updateTable('hosts')
    .set((eb) => ({
      alloc_vcpus: eb('alloc_vcpus', '-', r.vcpus),
      alloc_memory_mib: eb('alloc_memory_mib', '-', r.memoryMiB),
      alloc_disk_mib: eb('alloc_disk_mib', '-', r.diskMiB),
    }))
    .where('id', '=', hostId)
    .execute();
}

/** What a host's suspended tenants hold of its booking (the `susp_*` columns). */
export interface SuspendedHold {
  tenants: number;
  vcpus: number;
  memoryMiB: number;
}

/**
 * Sums the suspended tenants among `rows` (one host's tenants, with their current states). Only
 * those still desired running: one asked to stop or go keeps (or gives back) its full booking
 * from the request on, not from its host's next report.
 */
export function suspendedHold(
  rows: Iterable<{ state: string; desired_state: string; vcpus: number; memory_mib: number }>,
): SuspendedHold {
  const hold = { tenants: 0, vcpus: 0, memoryMiB: 0 };
  for (const r of rows) {
    if (r.state !== 'suspended' || r.desired_state !== 'running') continue;
    hold.tenants++;
    hold.vcpus += r.vcpus;
    hold.memoryMiB += r.memory_mib;
  }
  return hold;
}

/**
 * Recomputes a host's `susp_*` from its tenants' states, inside the caller's transaction. Never
 * moved by deltas: every path that changes a tenant's state on a host (the heartbeat, which
 * folds this into its own host update, a delete request, host removal, adoption) recomputes it
 * in the same transaction, so the accounting cannot drift from the states it sums.
 */
export async function recountSuspended(trx: Db, hostId: string): Promise<void> {
  const rows = await trx
    .selectFrom('tenants')
    .select(['state', 'desired_state', 'vcpus', 'memory_mib'])
    .where('host_id', '=', hostId)
    .where('state', '=', 'suspended')
    .execute();
  const hold = suspendedHold(rows);
  await trx
    .updateTable('hosts')
    .set({ susp_tenants: hold.tenants, susp_vcpus: hold.vcpus, susp_memory_mib: hold.memoryMiB })
    .where('id', '=', hostId)
    .execute();
}

function hasImage(imagesJson: string, imageId: string): boolean {
  try {
    return (JSON.parse(imagesJson) as { id: string }[]).some((i) => i.id === imageId);
  } catch {
    return false;
  }
}
