import { oneOperand } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { ago, emit, table } from '../../../output.ts';

export const usage = 'warren tenant snapshot list NAME [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  const snapshots = await (await connect(args)).snapshots.list(tenant);
  emit(args.json ?? false, { snapshots }, () =>
    table(
      snapshots.map((s) => ({
        name: s.name,
        created: ago(s.createdAt),
        parent: s.parent ?? '-',
        size: `${Math.ceil(s.bytes / 1048576)} MiB`,
        memory: s.memory,
      })),
      ['name', 'created', 'parent', 'size', 'memory'],
    ),
  );
  return 0;
}
