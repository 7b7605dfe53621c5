import { WarrenError } from '@warren/protocol';
import { twoOperands } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant backup verify NAME BACKUP_ID [--json]';

/** Exits 0 when every object checks out; otherwise names each failed object and exits 1 (BACKUP_CORRUPT). */
export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [tenant, id] = twoOperands(operands, 'tenant NAME and the BACKUP_ID', usage);
  const result = await (await connect(args)).backups.verify(tenant, id);
  if (result.ok) {
    emit(args.json ?? false, result, () =>
      process.stderr.write(
        `backup ${id} of ${tenant}: ok, ${result.chunks} chunks, ${(result.bytes / 1048576).toFixed(1)} MiB read and checked\n`,
      ),
    );
    return 0;
  }
  if (args.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else for (const p of result.problems) process.stderr.write(`${p.object}: ${p.problem}\n`);
  const first = result.problems[0];
  throw new WarrenError(
    'BACKUP_CORRUPT',
    `backup ${id} of ${tenant} failed verification: ${result.problems.length} bad object(s)${first ? `, first ${first.object}` : ''}`,
  );
}
