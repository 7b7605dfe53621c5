import { WarrenError } from '@warren/protocol';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';
import { rolloutFlag } from '../../../skill-flags.ts';

export const usage =
  'warren skill channel set NAME CHANNEL VERSION [--rollout 25%] [--apply next-start|now] [--json]';

/**
 * Points NAME@CHANNEL at VERSION. With --rollout below 100% only that share of the tenants on
 * the channel (the same ones while the rollout grows) get VERSION; the rest keep the version
 * everyone had. Run it again with a higher --rollout to widen it. `--apply now` restarts the
 * affected running VMs at once; the default (next-start) lets them pick it up at their next start.
 */
export async function run(
  args: ConnectionFlags & { rollout?: string; apply?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  if (operands.length !== 3)
    throw new WarrenError('INVALID_ARGUMENT', `expected NAME CHANNEL VERSION; usage: ${usage}`);
  const [name, channel, version] = operands as [string, string, string];
  if (args.apply !== undefined && args.apply !== 'now' && args.apply !== 'next-start')
    throw new WarrenError('INVALID_ARGUMENT', `--apply ${args.apply}: next-start or now`);
  const rolloutPercent = rolloutFlag(args.rollout);
  const ch = await (await connect(args)).skills.setChannel(name, channel, {
    version,
    ...(rolloutPercent === undefined ? {} : { rolloutPercent }),
    ...(args.apply ? { apply: args.apply as 'now' | 'next-start' } : {}),
  });
  emit(args.json ?? false, ch, () => {
    process.stdout.write(
      `${ch.name}@${ch.channel} -> ${ch.version}${ch.previousVersion === null ? '' : ` for ${ch.rolloutPercent}% of its tenants (the rest stay on ${ch.previousVersion})`}; applies ${ch.apply === 'now' ? 'at once (running VMs restart)' : 'at each VM’s next start'}\n`,
    );
  });
  return 0;
}
