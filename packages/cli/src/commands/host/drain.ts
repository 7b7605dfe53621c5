import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit } from '../../output.ts';

export const usage = 'warren host drain NAME [--undo] [--json]';

/** A draining host gets no new tenants; the ones on it keep running. --undo reopens it. */
export async function run(
  args: ConnectionFlags & { undo?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const ref = oneOperand(operands, 'host NAME or id', usage);
  const host = await (await connect(args)).hosts.drain(ref, !args.undo);
  emit(args.json ?? false, host, () =>
    process.stdout.write(
      host.draining
        ? `${host.name}: draining; no new tenants are placed on it (its ${host.tenants} tenants keep running)\n`
        : `${host.name}: not draining; it takes new tenants again\n`,
    ),
  );
  return 0;
}
