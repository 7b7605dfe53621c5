import { twoOperands } from '../../args.ts';
import { progressLine, progressText } from '../../backups.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit } from '../../output.ts';

export const usage = 'warren tenant restore NAME BACKUP_ID [--new NEW_NAME] [--no-wait] [--json]';

/**
 * Restores a backup into the tenant (its volumes replaced, its VM restarted) or, with --new,
 * into a new tenant (admin token); waits for the end with progress on stderr unless --no-wait.
 */
export async function run(
  args: ConnectionFlags & { new?: string; 'no-wait'?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, id] = twoOperands(operands, 'tenant NAME and the BACKUP_ID', usage);
  const warren = await connect(args);
  const started = await warren.backups.restore(
    tenant,
    id,
    args.new === undefined ? {} : { newTenant: args.new },
  );
  const target = started.tenant.name;
  let operation = started.operation;
  if (!args['no-wait']) {
    const line = progressLine(`restoring ${id} into ${target}`);
    try {
      operation = await warren.operations.wait(operation.id, {
        onProgress: (p) => line.update(progressText(p.operation.progress)),
      });
    } finally {
      line.end();
    }
  }
  const done = { tenant: started.tenant, operation };
  emit(args.json ?? false, done, () =>
    process.stderr.write(
      operation.status === 'succeeded'
        ? `restored backup ${id} into ${target}\n`
        : `restoring backup ${id} into ${target}: accepted as operation ${operation.id}\n`,
    ),
  );
  return 0;
}
