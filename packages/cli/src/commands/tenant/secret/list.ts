import { oneOperand } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { ago, emit, table } from '../../../output.ts';

export const usage = 'warren tenant secret list NAME [--json]';

/** Names, versions and times: the API never returns a value. */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  const secrets = await (await connect(args)).secrets.list(tenant);
  emit(args.json ?? false, { secrets }, () =>
    table(
      secrets.map((s) => ({ name: s.name, version: String(s.version), updated: ago(s.updatedAt) })),
      ['name', 'version', 'updated'],
    ),
  );
  return 0;
}
