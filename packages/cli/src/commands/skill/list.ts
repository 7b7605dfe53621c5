import { noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit, table } from '../../output.ts';

export const usage = 'warren skill list [--name NAME] [--json]';

export async function run(
  args: ConnectionFlags & { name?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const list = await (await connect(args)).skills.list(args.name);
  emit(args.json ?? false, list, () => {
    table(
      list.packages.map((p) => ({
        name: p.name,
        version: p.version,
        digest: p.digest.slice(0, 19),
        size: p.sizeBytes,
        skills: p.skills.join(','),
        created: p.createdAt,
      })),
      ['name', 'version', 'digest', 'size', 'skills', 'created'],
    );
    if (list.channels.length > 0) {
      process.stdout.write('\n');
      table(
        list.channels.map((c) => ({
          channel: `${c.name}@${c.channel}`,
          version: c.version,
          rollout:
            c.previousVersion === null ? '100%' : `${c.rolloutPercent}% (rest on ${c.previousVersion})`,
          apply: c.apply,
          updated: c.updatedAt,
        })),
        ['channel', 'version', 'rollout', 'apply', 'updated'],
      );
    }
  });
  return 0;
}
