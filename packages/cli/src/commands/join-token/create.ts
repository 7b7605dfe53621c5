import { noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';

export const usage = 'warren join-token create [--single-use] [--name LABEL] [--json]';

/**
 * A new token for host agents to join with; --single-use: the first join consumes it. To
 * rotate, create one, hand it out, then revoke the old one (`warren join-token revoke`).
 * stdout gets only the token (or the JSON), so it can be captured.
 */
export async function run(
  args: ConnectionFlags & { 'single-use'?: boolean; name?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const created = await (await connect(args)).joinTokens.create({
    singleUse: args['single-use'] ?? false,
    ...(args.name ? { name: args.name } : {}),
  });
  if (args.json) {
    process.stdout.write(`${JSON.stringify(created, null, 2)}\n`);
    return 0;
  }
  process.stderr.write(
    `created ${created.joinToken.singleUse ? 'single-use ' : ''}join token ${created.joinToken.id}; it is shown only this once:\n`,
  );
  process.stdout.write(`${created.token}\n`);
  return 0;
}
