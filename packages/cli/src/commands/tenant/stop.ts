import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { follow } from '../../lifecycle.ts';

export const usage = 'warren tenant stop NAME [--no-wait] [--json]';

/** Waits until the VM has stopped unless --no-wait; its data volume is kept. */
export async function run(
  args: ConnectionFlags & { 'no-wait'?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const name = oneOperand(operands, 'tenant NAME', usage);
  const warren = await connect(args);
  await follow(warren, await warren.tenants.stop(name), 'stopping', args);
  return 0;
}
