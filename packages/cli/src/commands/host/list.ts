import { noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { ago, emit, table } from '../../output.ts';

export const usage = 'warren host list [--json]';

/**
 * VCPUS, MEMORY and DISK read booked/capacity; SUSPENDED is the memory suspended tenants hold
 * of that booking (free for placement until they wake) and how many they are.
 */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const hosts = await (await connect(args)).hosts.list();
  emit(args.json ?? false, { hosts }, () =>
    table(
      hosts.map((h) => ({
        name: h.name,
        id: h.id,
        health: h.health,
        draining: h.draining ? 'yes' : 'no',
        // `off`: the operator runs this host's VMs without CPU, memory and pids limits.
        cgroups: h.cgroups,
        vmm: h.vmm,
        vcpus: `${h.allocated.vcpus}/${h.capacity.vcpus}`,
        memory: `${h.allocated.memoryMiB}/${h.capacity.memoryMiB} MiB`,
        disk: `${h.allocated.diskMiB}/${h.capacity.diskMiB} MiB`,
        suspended: `${h.suspended.memoryMiB} MiB (${h.suspended.tenants})`,
        tenants: h.tenants,
        quarantined: h.quarantined.length,
        'last-heartbeat': ago(h.lastHeartbeatAt),
      })),
      [
        'name',
        'id',
        'health',
        'draining',
        'cgroups',
        'vmm',
        'vcpus',
        'memory',
        'disk',
        'suspended',
        'tenants',
        'quarantined',
        'last-heartbeat',
      ],
    ),
  );
  return 0;
}
