import { noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { ago, emit, table } from '../../output.ts';

export const usage = 'warren key list [--tenant NAME] [--json]';

export async function run(
  args: ConnectionFlags & { tenant?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const keys = await (await connect(args)).keys.list(args.tenant);
  emit(args.json ?? false, { keys }, () =>
    table(
      keys.map((k) => ({
        id: k.id,
        name: k.name,
        tenant: k.tenantName,
        prefix: `${k.prefix}…`,
        created: k.createdAt,
        'last-used': ago(k.lastUsedAt),
      })),
      ['id', 'name', 'tenant', 'prefix', 'created', 'last-used'],
    ),
  );
  return 0;
}
