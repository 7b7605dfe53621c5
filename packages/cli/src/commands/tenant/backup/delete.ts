import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant backup delete NAME BACKUP_ID [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, id] = twoOperands(operands, 'tenant NAME and the BACKUP_ID', usage);
  await (await connect(args)).backups.delete(tenant, id);
  emit(args.json ?? false, { deleted: id }, () =>
    process.stderr.write(`deleted backup ${id} of ${tenant}\n`),
  );
  return 0;
}
