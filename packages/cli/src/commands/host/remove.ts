import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit } from '../../output.ts';

export const usage = 'warren host remove NAME [--force] [--json]';

/**
 * Removes a host that is gone for good. Its tenants become `lost`: restore each from a backup
 * onto another host (`warren tenant restore T BACKUP`) or delete it. Refused while the host
 * still heartbeats, unless --force.
 */
export async function run(
  args: ConnectionFlags & { force?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const ref = oneOperand(operands, 'host NAME or id', usage);
  const removed = await (await connect(args)).hosts.remove(ref, { force: args.force ?? false });
  emit(args.json ?? false, removed, () => {
    process.stdout.write(`removed host ${removed.host}\n`);
    if (removed.lostTenants.length) {
      process.stdout.write(
        `lost tenants (restore each from a backup: warren tenant restore NAME BACKUP, or delete it): ${removed.lostTenants.join(', ')}\n`,
      );
    }
  });
  return 0;
}
