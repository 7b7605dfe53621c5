import { WarrenError } from '@warren/protocol';
import { idleTimeoutFlag, oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit } from '../../output.ts';

export const usage = 'warren tenant update NAME --idle-timeout 20s|15m|2h|never|default [--json]';

/**
 * Changes a tenant's settings that need no new VM. `--idle-timeout default` goes back to the
 * platform default (WARREN_IDLE_TIMEOUT). A tenant's own key may change its idle timeout.
 */
export async function run(
  args: ConnectionFlags & { 'idle-timeout'?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const ref = oneOperand(operands, 'tenant NAME or id', usage);
  const idleTimeout = idleTimeoutFlag(args['idle-timeout'], true);
  if (idleTimeout === undefined) {
    throw new WarrenError('INVALID_ARGUMENT', `nothing to change; usage: ${usage}`);
  }
  const t = await (await connect(args)).tenants.update(ref, { idleTimeout });
  emit(args.json ?? false, t, () =>
    process.stdout.write(
      `${t.name}: idle timeout ${t.idleTimeout.effective}${t.idleTimeout.setting === null ? ' (the platform default)' : ''}\n`,
    ),
  );
  return 0;
}
