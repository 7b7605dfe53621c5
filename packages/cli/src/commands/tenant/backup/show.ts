import { twoOperands } from '../../../args.ts';
import { drillText, progressText } from '../../../backups.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant backup show NAME BACKUP_ID [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, id] = twoOperands(operands, 'tenant NAME and the BACKUP_ID', usage);
  const b = await (await connect(args)).backups.get(tenant, id);
  emit(args.json ?? false, b, () => {
    const rows: [string, string][] = [
      ['id', b.id],
      ['tenant', b.tenantName],
      ['state', b.state === 'running' ? `running ${progressText(b.progress)}` : b.state],
      ['trigger', b.trigger],
      ['created', b.createdAt],
      ['point in time', b.pointInTime ?? '-'],
      ['completed', b.completedAt ?? '-'],
      [
        'volumes',
        `${(b.sizeBytes / 1048576).toFixed(1)} MiB${b.includeRoot ? ' (data and root)' : ' (data)'}`,
      ],
      ['stored', `${(b.storedBytes / 1048576).toFixed(1)} MiB`],
      ['mode', b.mode ?? '-'],
      ...(b.error ? ([['error', `${b.error.code}: ${b.error.message}`]] as [string, string][]) : []),
      ['drill', b.drill ? `${drillText(b.drill)} (${b.drill.at})` : '-'],
      ...(b.drill?.error
        ? ([['drill error', `${b.drill.error.code}: ${b.drill.error.message}`]] as [string, string][])
        : []),
    ];
    for (const [k, v] of rows) process.stdout.write(`${`${k}:`.padEnd(15)}${v}\n`);
  });
  return 0;
}
