import { oneOperand } from '../../args.ts';
import { drillText, progressText } from '../../backups.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { ago, emit, table } from '../../output.ts';

export const usage = 'warren tenant backups NAME [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  const backups = await (await connect(args)).backups.list(tenant);
  emit(args.json ?? false, { backups }, () =>
    table(
      backups.map((b) => ({
        id: b.id,
        state: b.state === 'running' ? `running ${progressText(b.progress)}` : b.state,
        taken: ago(b.pointInTime ?? b.createdAt),
        trigger: b.trigger,
        size: `${(b.sizeBytes / 1048576).toFixed(1)} MiB`,
        stored: `${(b.storedBytes / 1048576).toFixed(1)} MiB`,
        mode: b.mode ?? '-',
        root: b.includeRoot ? 'yes' : 'no',
        drill: drillText(b.drill),
      })),
      ['id', 'state', 'taken', 'trigger', 'size', 'stored', 'mode', 'root', 'drill'],
    ),
  );
  return 0;
}
