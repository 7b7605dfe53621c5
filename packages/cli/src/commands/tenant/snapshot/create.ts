import { oneOperand } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage = 'warren tenant snapshot create NAME [--name SNAPSHOT] [--json]';

/** Prints the snapshot's name on stdout (made up by the host when --name is not given). */
export async function run(
  args: ConnectionFlags & { name?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  const warren = await connect(args);
  const created = await warren.snapshots.create(tenant, args.name === undefined ? {} : { name: args.name });
  emit(args.json ?? false, created, () => {
    const s = created.snapshot;
    process.stderr.write(
      `snapshot ${s.name} of ${tenant}: ${Math.ceil(s.bytes / 1048576)} MiB, guest paused ${Math.round(s.pausedMs)} ms\n`,
    );
    process.stdout.write(`${s.name}\n`);
  });
  return 0;
}
