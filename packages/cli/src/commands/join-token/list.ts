import { noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { ago, emit, table } from '../../output.ts';

export const usage = 'warren join-token list [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const joinTokens = await (await connect(args)).joinTokens.list();
  emit(args.json ?? false, { joinTokens }, () =>
    table(
      joinTokens.map((k) => ({
        id: k.id,
        name: k.name,
        prefix: `${k.prefix}…`,
        use: k.hostId ? `re-join ${k.hostId}` : k.singleUse ? 'once' : 'any',
        file: k.bootstrap ? 'yes' : 'no',
        expires: k.expiresAt ?? '-',
        'last-used': ago(k.lastUsedAt),
      })),
      ['id', 'name', 'prefix', 'use', 'file', 'expires', 'last-used'],
    ),
  );
  return 0;
}
