import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant session show NAME ID [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, id] = twoOperands(operands, 'tenant NAME and the session ID', usage);
  const s = await (await connect(args)).sessions.get(tenant, id);
  emit(args.json ?? false, s, () => {
    const rows: [string, string][] = [
      ['id', s.id],
      ['state', s.state],
      ['outcome', s.outcome ?? '-'],
      ['snapshot', s.snapshot],
      ['created', s.createdAt],
      ['expires', s.expiresAt],
      ['ended', s.endedAt ?? '-'],
      ['error', s.error ? `${s.error.code}: ${s.error.message}` : '-'],
    ];
    for (const [k, v] of rows) process.stdout.write(`${`${k}:`.padEnd(10)}${v}\n`);
  });
  return 0;
}
