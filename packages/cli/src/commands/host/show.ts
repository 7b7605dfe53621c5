import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { ago, emit, table } from '../../output.ts';

export const usage = 'warren host show NAME [--json]';

/** One host: capacity, what is booked and what suspended tenants give back, and its quarantined VMs. */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const ref = oneOperand(operands, 'host NAME or id', usage);
  const h = await (await connect(args)).hosts.get(ref);
  emit(args.json ?? false, h, () => {
    const rows: [string, string][] = [
      ['name', h.name],
      ['id', h.id],
      ['address', h.address],
      ['health', `${h.health}${h.draining ? ', draining' : ''} (last heartbeat ${ago(h.lastHeartbeatAt)})`],
      ['agent', `${h.agentVersion}, vmm ${h.vmm}, cgroups ${h.cgroups}`],
      ['vcpus', `${h.allocated.vcpus}/${h.capacity.vcpus} booked, ${h.suspended.vcpus} of them suspended`],
      [
        'memory',
        `${h.allocated.memoryMiB}/${h.capacity.memoryMiB} MiB booked, ${h.suspended.memoryMiB} MiB of them suspended`,
      ],
      ['disk', `${h.allocated.diskMiB}/${h.capacity.diskMiB} MiB booked`],
      ['tenants', `${h.tenants} (${h.suspended.tenants} suspended)`],
      ['images', h.images.length ? h.images.join(', ') : '-'],
      ['quarantined', h.quarantined.length ? `${h.quarantined.length} VM(s), below` : 'none'],
    ];
    for (const [k, v] of rows) process.stdout.write(`${`${k}:`.padEnd(13)}${v}\n`);
    if (h.quarantined.length) {
      process.stdout.write('\n');
      table(
        h.quarantined.map((q) => ({
          vm: q.vmId,
          tenant: q.tenantId,
          size: `${q.vcpus} vCPU, ${q.memoryMiB} MiB, ${q.diskMiB} MiB disk`,
          'quarantined-at': q.quarantinedAt,
          'removed-after': q.removeAfter,
        })),
        ['vm', 'tenant', 'size', 'quarantined-at', 'removed-after'],
      );
      process.stdout.write(`\nadopt one as a tenant: warren host adopt ${h.name} VM --name NAME\n`);
    }
  });
  return 0;
}
