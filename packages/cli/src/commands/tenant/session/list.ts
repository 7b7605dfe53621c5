import { oneOperand } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';
import { sessionTable } from '../../../sessions.ts';

export const usage = 'warren tenant session list NAME [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  const sessions = await (await connect(args)).sessions.list(tenant);
  emit(args.json ?? false, { sessions }, () => sessionTable(sessions));
  return 0;
}
