import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant snapshot revert NAME SNAPSHOT [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, name] = twoOperands(operands, 'tenant NAME and the SNAPSHOT', usage);
  const result = await (await connect(args)).snapshots.revert(tenant, name);
  emit(args.json ?? false, result, () =>
    process.stderr.write(`reverted ${tenant} to ${name} in ${Math.round(result.revertMs)} ms\n`),
  );
  return 0;
}
