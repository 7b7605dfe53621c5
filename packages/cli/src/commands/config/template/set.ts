import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';
import { readJsonObject } from '../../../skill-flags.ts';

export const usage = 'warren config template set FILE JSON_PATH [--json]';

/**
 * Sets the platform-wide template of configuration file FILE (e.g. openclaw.json) to the JSON
 * object in JSON_PATH, as a new version; every tenant's rendered file changes at once.
 */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [file, path] = twoOperands(operands, 'FILE and JSON_PATH', usage);
  const template = await readJsonObject(path, file);
  const t = await (await connect(args)).skills.setTemplate(file, template);
  emit(args.json ?? false, t, () => process.stdout.write(`${t.file}: template version ${t.version}\n`));
  return 0;
}
