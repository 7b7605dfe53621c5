import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';

export const usage = 'warren tenant snapshot delete NAME SNAPSHOT [--json]';

/** The API answers 204 with no body, so --json prints nothing on success. */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, name] = twoOperands(operands, 'tenant NAME and the SNAPSHOT', usage);
  await (await connect(args)).snapshots.delete(tenant, name);
  if (!args.json) process.stderr.write(`deleted snapshot ${name} of ${tenant}\n`);
  return 0;
}
