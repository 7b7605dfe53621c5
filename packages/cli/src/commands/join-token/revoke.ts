import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';

export const usage = 'warren join-token revoke ID [--json]';

/** Joined hosts keep working (they use their own host tokens). --json prints nothing on success. */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const id = oneOperand(operands, 'join token ID (key_…)', usage);
  await (await connect(args)).joinTokens.revoke(id);
  if (!args.json) process.stdout.write(`revoked ${id}\n`);
  return 0;
}
