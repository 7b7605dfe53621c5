import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';
import { changeLines } from '../../../sessions.ts';

export const usage = 'warren tenant session changes NAME ID [--json]';

/** One line per file changed since the session's clean snapshot: `A|M|D root|data PATH`. */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, id] = twoOperands(operands, 'tenant NAME and the session ID', usage);
  const list = await (await connect(args)).sessions.changes(tenant, id);
  emit(args.json ?? false, list, () => {
    for (const line of changeLines(list)) process.stdout.write(`${line}\n`);
  });
  return 0;
}
