import { WarrenError } from '@warren/protocol';
import { idleTimeoutFlag, oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit } from '../../output.ts';
import { configFlags } from '../../skill-flags.ts';

export const usage =
  'warren tenant update NAME [--idle-timeout 20s|15m|2h|never|default] [--skill NAME@VERSION|NAME@CHANNEL]... [--skill none] [--config FILE=JSON_PATH|FILE=]... [--json]';

/**
 * Changes a tenant's settings that need no new VM. `--idle-timeout default` goes back to the
 * platform default (WARREN_IDLE_TIMEOUT). A tenant's own key may change its idle timeout.
 */
export async function run(
  args: ConnectionFlags & { 'idle-timeout'?: string; skill?: string[]; config?: string[]; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const ref = oneOperand(operands, 'tenant NAME or id', usage);
  const idleTimeout = idleTimeoutFlag(args['idle-timeout'], true);
  // `--skill none` removes every package; otherwise the list replaces the tenant's.
  const skills = args.skill?.length ? args.skill.filter((s) => s !== 'none') : undefined;
  const config = await configFlags(args.config);
  if (idleTimeout === undefined && skills === undefined && config === undefined) {
    throw new WarrenError('INVALID_ARGUMENT', `nothing to change; usage: ${usage}`);
  }
  const t = await (await connect(args)).tenants.update(ref, {
    ...(idleTimeout === undefined ? {} : { idleTimeout }),
    ...(skills === undefined ? {} : { skills }),
    ...(config === undefined ? {} : { config }),
  });
  emit(args.json ?? false, t, () =>
    process.stdout.write(
      `${t.name}: idle timeout ${t.idleTimeout.effective}${t.idleTimeout.setting === null ? ' (the platform default)' : ''}\n`,
    ),
  );
  return 0;
}
