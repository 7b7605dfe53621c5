import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant session end NAME ID [--keep] [--json]';

/** Removes the session's credentials, then reverts the VM to its clean snapshot unless --keep. */
export async function run(
  args: ConnectionFlags & { keep?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, id] = twoOperands(operands, 'tenant NAME and the session ID', usage);
  const s = await (await connect(args)).sessions.end(tenant, id, { keep: args.keep ?? false });
  emit(args.json ?? false, s, () =>
    process.stderr.write(`session ${s.id} ${s.state}: ${s.outcome ?? '-'}\n`),
  );
  return 0;
}
