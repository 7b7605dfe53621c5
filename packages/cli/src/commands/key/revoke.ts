import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';

export const usage = 'warren key revoke ID [--json]';

/** The API answers 204 with no body, so --json prints nothing on success. */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const id = oneOperand(operands, 'key ID (key_…)', usage);
  await (await connect(args)).keys.revoke(id);
  if (!args.json) process.stdout.write(`revoked ${id}\n`);
  return 0;
}
