import { packSkillDir } from '@warren/images/skill-bundle';
import { WarrenError } from '@warren/protocol';
import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit } from '../../output.ts';

export const usage = 'warren skill push DIR --name NAME --version VERSION [--json]';

/**
 * Packs DIR (skill folders, each with a SKILL.md) into a deterministic bundle and pushes it as
 * NAME@VERSION. Versions are immutable: pushing the same content again changes nothing, other
 * content under an existing version is refused.
 */
export async function run(
  args: ConnectionFlags & { name?: string; version?: string | boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const dir = oneOperand(operands, 'package DIR', usage);
  if (!args.name || typeof args.version !== 'string')
    throw new WarrenError('INVALID_ARGUMENT', `--name and --version are required; usage: ${usage}`);
  const { bundle, digest, skills } = await packSkillDir(dir);
  const r = await (await connect(args)).skills.push(args.name, args.version, bundle);
  emit(args.json ?? false, r, () => {
    process.stdout.write(
      `${r.package.name}@${r.package.version} ${digest} (${bundle.length} bytes; skills: ${skills.join(', ')})${r.created ? '' : ' was already pushed with this content'}\n`,
    );
  });
  return 0;
}
