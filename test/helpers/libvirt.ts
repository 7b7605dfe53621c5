import { existsSync } from 'node:fs';
import {
  domainPrefix,
  ensureLibvirtd,
  type StartedLibvirt,
  stopLibvirt,
  Virsh,
} from '../../apps/host-agent/src/vmm/libvirt/index.ts';

export interface TestLibvirt {
  virsh: Virsh;
  /** What this helper started or wrote (nothing when a libvirtd already answered). */
  started: StartedLibvirt;
  /** Names of the running domains of an agent's `vms/` directory. */
  domainsOf(vmsDir: string): Promise<string[]>;
  /** Stops, by pid, only what this helper started. */
  stop(): Promise<void>;
}

/** Why the libvirt driver cannot be tested here, or undefined when it can. */
export function libvirtSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'libvirt tests run as root (libvirtd starts QEMU as the VM uid)';
  for (const bin of ['/usr/bin/virsh', '/usr/sbin/libvirtd', '/usr/sbin/virtlogd', '/usr/bin/tini']) {
    if (!existsSync(bin)) return `${bin} is missing: run scripts/install-deps.sh`;
  }
  return undefined;
}

/**
 * libvirtd for a test file: the one already running if it answers, otherwise one started here
 * (virtlogd and libvirtd under tini, see daemon.ts) and stopped by `stop()` at the end, which
 * also removes the qemu.conf it wrote on a host that had none.
 */
export async function startLibvirtForTests(): Promise<TestLibvirt> {
  const virsh = new Virsh();
  const started = await ensureLibvirtd({ virsh, log: (m) => console.log(`# libvirt: ${m}`) });
  return {
    virsh,
    started,
    async domainsOf(vmsDir) {
      const names = (await virsh.run(['list', '--all', '--name'])).split('\n').map((l) => l.trim());
      return names.filter((n) => n.startsWith(domainPrefix(vmsDir)));
    },
    stop: () => stopLibvirt(started),
  };
}
