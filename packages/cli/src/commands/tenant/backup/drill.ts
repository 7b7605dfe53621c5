import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant backup drill NAME BACKUP_ID [--json]';

/**
 * Runs a restore drill of the backup (admin) and waits for it: exits 0 when it passed, and with
 * the drill's error (BACKUP_CORRUPT, BACKUP_DRILL_FAILED, VM_BOOT_FAILED, ...) when it failed.
 */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, id] = twoOperands(operands, 'tenant NAME and the BACKUP_ID', usage);
  const client = await connect(args);
  await client.backups.drill(tenant, id);
  if (!args.json) process.stderr.write(`restore drill of backup ${id} of ${tenant} started; waiting\n`);
  const b = await client.backups.waitDrill(tenant, id, { intervalMs: 1000 });
  emit(args.json ?? false, b, () =>
    process.stderr.write(
      `restore drill of backup ${id} of ${tenant}: passed, ${b.drill?.filesChecked ?? 0} files' digests match\n`,
    ),
  );
  return 0;
}
