import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';

export const usage = 'warren host rejoin NAME [--json]';

/**
 * Prints a single-use join token that lets this host join again under its name, for an agent
 * that lost its credentials or a machine that replaces it: run that agent with
 * WARREN_JOIN_TOKEN set to it. stdout gets only the token (or the JSON), so it can be captured.
 */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const ref = oneOperand(operands, 'host NAME or id', usage);
  const created = await (await connect(args)).hosts.rejoin(ref);
  if (args.json) {
    process.stdout.write(`${JSON.stringify(created, null, 2)}\n`);
    return 0;
  }
  process.stderr.write(
    `re-join token for host ${ref}, single-use, valid until ${created.joinToken.expiresAt}; shown only this once:\n`,
  );
  process.stdout.write(`${created.token}\n`);
  return 0;
}
