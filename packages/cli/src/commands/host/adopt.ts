import { WarrenError } from '@warren/protocol';
import { twoOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit } from '../../output.ts';

export const usage = 'warren host adopt NAME VM_ID --name TENANT_NAME [--json]';

/**
 * Adopts a VM its host keeps in quarantine (`warren host show NAME` lists them) as a tenant with
 * the VM's own tenant id, size and image. It starts out stopped: `warren tenant start` runs it.
 */
export async function run(
  args: ConnectionFlags & { name?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const [host, vm] = twoOperands(operands, 'host NAME and the quarantined VM_ID', usage);
  if (!args.name) {
    throw new WarrenError('INVALID_ARGUMENT', `give the new tenant's name with --name; usage: ${usage}`);
  }
  const t = await (await connect(args)).hosts.adopt(host, vm, args.name);
  emit(args.json ?? false, t, () =>
    process.stdout.write(
      `adopted ${vm} as tenant ${t.name} (${t.id}), stopped; start it with: warren tenant start ${t.name}\n`,
    ),
  );
  return 0;
}
