import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';

export const usage = 'warren tenant secret rm NAME SECRET [--json]';

/** The API answers 204 with no body, so --json prints nothing on success. */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, name] = twoOperands(operands, 'tenant NAME and the SECRET', usage);
  await (await connect(args)).secrets.remove(tenant, name);
  if (!args.json) process.stderr.write(`removed secret ${name} of ${tenant}\n`);
  return 0;
}
