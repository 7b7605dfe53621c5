import { intFlag, noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit, table } from '../../output.ts';

export const usage = 'warren audit [--tenant NAME] [--limit N] [--json]';

/** Newest first. */
export async function run(
  args: ConnectionFlags & { tenant?: string; limit?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const limit = intFlag(args.limit, '--limit');
  const events = await (await connect(args)).audit.list({
    ...(args.tenant ? { tenant: args.tenant } : {}),
    ...(limit === undefined ? {} : { limit }),
  });
  emit(args.json ?? false, { events }, () =>
    table(
      events.map((e) => ({
        time: e.at,
        actor: e.actor,
        action: e.action,
        target: e.target,
        result: e.result,
      })),
      ['time', 'actor', 'action', 'target', 'result'],
    ),
  );
  return 0;
}
