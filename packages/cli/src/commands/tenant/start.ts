import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { follow } from '../../lifecycle.ts';

export const usage = 'warren tenant start NAME [--no-wait] [--json]';

/** Waits until the tenant runs unless --no-wait. */
export async function run(
  args: ConnectionFlags & { 'no-wait'?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const name = oneOperand(operands, 'tenant NAME', usage);
  const warren = await connect(args);
  await follow(warren, await warren.tenants.start(name), 'starting', args);
  return 0;
}
