import { readFile } from 'node:fs/promises';
import { WarrenError } from '@warren/protocol';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage =
  'warren tenant secret set NAME SECRET=VALUE | SECRET=- | SECRET --from-file PATH [--json]   (SECRET=- reads the value from stdin)';

/**
 * Sets a secret of the tenant. The value comes from the command line, stdin (`SECRET=-`) or a
 * file (`--from-file`), so it need not appear in a shell's history or the process list; it is
 * sent as the exact bytes (base64 on the wire), never printed.
 */
export async function run(
  args: ConnectionFlags & { 'from-file'?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, assignment, ...extra] = operands;
  if (!tenant || !assignment || extra.length > 0)
    throw new WarrenError('INVALID_ARGUMENT', `give the tenant NAME and one SECRET=VALUE; usage: ${usage}`);
  const eq = assignment.indexOf('=');
  const name = eq < 0 ? assignment : assignment.slice(0, eq);
  let value: Buffer;
  if (args['from-file'] !== undefined) {
    if (eq >= 0)
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `give either SECRET=VALUE or SECRET --from-file PATH; usage: ${usage}`,
      );
    value = await readFile(args['from-file']).catch((e: NodeJS.ErrnoException) => {
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `--from-file ${args['from-file']}: cannot be read (${e.code ?? e.message})`,
      );
    });
  } else if (eq < 0) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `give the value: SECRET=VALUE, SECRET=- (stdin) or --from-file PATH; usage: ${usage}`,
    );
  } else if (assignment.slice(eq + 1) === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    value = Buffer.concat(chunks);
  } else {
    value = Buffer.from(assignment.slice(eq + 1), 'utf8');
  }
  try {
    const set = await (await connect(args)).secrets.set(tenant, name, value);
    emit(args.json ?? false, set, () =>
      process.stderr.write(`set secret ${set.name} of ${tenant}: version ${set.version}\n`),
    );
  } finally {
    value.fill(0);
  }
  return 0;
}
