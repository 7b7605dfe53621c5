import { loadConfig, openHost } from '@warren/host-agent';
import { WarrenError } from '@warren/protocol';
import { exitStatusOf, interruptible } from '../../output.ts';

export const usage =
  'warren vm run --image <id> [--cpus N] [--memory MiB] [--disk MiB] [--timeout SEC] -- <command...>';

/**
 * Boots a throwaway VM, runs one command in it with its output streamed, destroys the VM
 * and exits with the command's exit code (128+n when a signal ended it).
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
  // A throwaway VM for one command gets no NIC: it needs none, and the host agent that may
  // run on the same data directory owns the firewall.
  const host = await openHost(loadConfig(process.env, { network: 'off' }), log);
  const vm = await host.vms.create({
    image: args.image,
    cpus: args.cpus ? Number(args.cpus) : 1,
    memoryMiB: args.memory ? Number(args.memory) : 512,
    diskMiB: args.disk ? Number(args.disk) : 256,
  });
  const interrupt = interruptible();
  try {
    await host.vms.start(vm.id);
    log(`VM ${vm.id} ready (${host.accel.accel})`);
    const guest = await host.vms.guest(vm.id);
    const exit = await guest.exec(
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
    await host.vms
      .destroy(vm.id)
      .catch((e) => process.stderr.write(`warren: cleanup of ${vm.id} failed: ${e}\n`));
    host.vms.close();
  }
}
