import { WarrenError } from '@warren/protocol';
import { HostAgentClient } from '@warren/sdk';
import { exitStatusOf, interruptible } from '../../output.ts';

export const usage =
  'warren vm run --image <id> [--cpus N] [--memory MiB] [--disk MiB] [--timeout SEC] -- <command...>';

/**
 * A throwaway VM for one command is as small as the bounds allow it to be useful: one vCPU,
 * 512 MiB, and a data volume just big enough for scratch files (a tenant's defaults are
 * larger: RESOURCE_LIMITS in packages/protocol, which also bounds these flags).
 */
const THROWAWAY = { cpus: 1, memoryMiB: 512, diskMiB: 256 } as const;

/**
 * Boots a throwaway VM through the host agent on this machine (its local API, so the agent's
 * lock and records stay its own), runs one command in it with its output streamed, destroys
 * the VM and exits with the command's exit code (128+n when a signal ended it). The VM has no
 * NIC: it needs none.
 */
export async function run(
  args: {
    image?: string;
    cpus?: string;
    memory?: string;
    disk?: string;
    timeout?: string;
    verbose?: boolean;
  },
  command: string[],
): Promise<number> {
  if (!args.image) throw new WarrenError('INVALID_ARGUMENT', '--image is required (see `warren image list`)');
  if (command.length === 0) throw new WarrenError('INVALID_ARGUMENT', 'give the command after `--`');
  const log = args.verbose ? (m: string) => process.stderr.write(`warren: ${m}\n`) : () => {};
  const agent = new HostAgentClient();
  const vm = await agent.createVm({
    image: args.image,
    cpus: args.cpus ? Number(args.cpus) : THROWAWAY.cpus,
    memoryMiB: args.memory ? Number(args.memory) : THROWAWAY.memoryMiB,
    diskMiB: args.disk ? Number(args.disk) : THROWAWAY.diskMiB,
  });
  const interrupt = interruptible();
  try {
    await agent.startVm(vm.id);
    log(`VM ${vm.id} ready`);
    const exit = await agent.exec(
      vm.id,
      { argv: command, ...(args.timeout ? { timeoutMs: Number(args.timeout) * 1000 } : {}) },
      {
        onStdout: (b) => process.stdout.write(b),
        onStderr: (b) => process.stderr.write(b),
        signal: interrupt.signal,
      },
    );
    if (exit.timedOut) process.stderr.write(`warren: command timed out after ${args.timeout} s\n`);
    return exitStatusOf(exit);
  } catch (e) {
    if (interrupt.interrupted()) return 130;
    throw e;
  } finally {
    interrupt.dispose();
    await agent
      .destroyVm(vm.id)
      .catch((e) => process.stderr.write(`warren: cleanup of ${vm.id} failed: ${e}\n`));
  }
}
