import { oneOperand } from '../../../args.ts';
import { progressLine, progressText } from '../../../backups.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant backup NAME [--include-root] [--no-wait] [--json]';

/**
 * Backs the tenant up and waits for the end with progress on stderr (--no-wait: returns once
 * it started); prints the backup's id on stdout.
 */
export async function run(
  args: ConnectionFlags & { 'include-root'?: boolean; 'no-wait'?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  const warren = await connect(args);
  let backup = await warren.backups.create(tenant, { includeRoot: args['include-root'] ?? false });
  if (!args['no-wait']) {
    const line = progressLine(`backing up ${tenant} (${backup.id})`);
    try {
      backup = await warren.backups.wait(tenant, backup.id, {
        onProgress: (b) => line.update(progressText(b.progress)),
      });
    } finally {
      line.end();
    }
  }
  emit(args.json ?? false, backup, () => {
    if (backup.state === 'complete') {
      process.stderr.write(
        `backup ${backup.id} of ${tenant}: ${backup.mode ?? 'complete'}, ${(backup.sizeBytes / 1048576).toFixed(1)} MiB of volumes, ${(backup.storedBytes / 1048576).toFixed(1)} MiB stored\n`,
      );
    } else {
      process.stderr.write(
        `backup ${backup.id} of ${tenant} started; follow it with \`warren tenant backup show ${tenant} ${backup.id}\`\n`,
      );
    }
    process.stdout.write(`${backup.id}\n`);
  });
  return 0;
}
