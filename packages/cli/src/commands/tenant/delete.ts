import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { follow } from '../../lifecycle.ts';

export const usage = 'warren tenant delete NAME [--no-wait] [--json]';

/** Waits until the VM and its data are gone unless --no-wait. */
export async function run(
  args: ConnectionFlags & { 'no-wait'?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const name = oneOperand(operands, 'tenant NAME', usage);
  const warren = await connect(args);
  await follow(warren, await warren.tenants.delete(name), 'deleting', args);
  return 0;
}
