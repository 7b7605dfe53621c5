import { noOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit, table } from '../../../output.ts';

export const usage = 'warren config template list [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const templates = await (await connect(args)).skills.templates();
  emit(args.json ?? false, { templates }, () =>
    table(
      templates.map((t) => ({ file: t.file, version: t.version, created: t.createdAt })),
      ['file', 'version', 'created'],
    ),
  );
  return 0;
}
