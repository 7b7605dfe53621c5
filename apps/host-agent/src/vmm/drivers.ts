import type { HostAgentConfig } from '../config.ts';
import type { VmmDriver } from './driver.ts';
import { ensureLibvirtd, LibvirtDriver, stopLibvirt, Virsh } from './libvirt/index.ts';
import { missingCommands, needsRoot } from './prerequisites.ts';
import { QemuDriver } from './qemu/qemu-driver.ts';

export type VmmName = HostAgentConfig['vmm'];

export interface DriverEntry {
  /** Builds the driver from the host's validated configuration. */
  create(config: HostAgentConfig, log: (message: string) => void): VmmDriver;
  /** Why the driver cannot run on this machine (a missing program, not root), or undefined when it can. */
  prerequisites(config: HostAgentConfig): Promise<string | undefined>;
  /**
   * Starts the host services the driver needs when none runs (a libvirt daemon), and returns
   * what stops exactly what it started. The host agent's driver `open` starts them too and leaves
   * them running (its VMs outlive it); tests and benchmarks call this to leave the machine as
   * they found it.
   */
  services?(config: HostAgentConfig, log: (message: string) => void): Promise<{ stop(): Promise<void> }>;
}

/**
 * Every VMM driver, by the name WARREN_VMM selects it with. Adding a driver means its folder,
 * an entry here and its name in the WARREN_VMM enum (config.ts); the contract suite
 * (test/vm/vmm-contract.test.ts) and bench/boot.ts run each entry.
 */
export const DRIVERS: { readonly [name in VmmName]: DriverEntry } = {
  qemu: {
    create: (config) =>
      new QemuDriver({
        binary: config.qemuBinary,
        tcgTranslationCacheMiB: config.tcgTranslationCacheMiB,
        consoleLogBytes: config.consoleLogMiB * 1024 * 1024,
      }),
    async prerequisites(config) {
      const missing = await missingCommands([
        config.qemuBinary,
        'qemu-img',
        'mkfs.ext4',
        'unshare',
        'setpriv',
        'perl',
      ]);
      if (missing.length > 0) return `missing programs: ${missing.join(', ')}`;
      return needsRoot('qemu');
    },
  },
  libvirt: {
    create: (config, log) =>
      new LibvirtDriver({
        // libvirt wants an absolute path; a bare name is left to its default, /usr/bin/qemu-system-x86_64.
        ...(config.qemuBinary.startsWith('/') ? { emulator: config.qemuBinary } : {}),
        tcgTranslationCacheMiB: config.tcgTranslationCacheMiB,
        consoleLogBytes: config.consoleLogMiB * 1024 * 1024,
        log,
      }),
    async prerequisites() {
      // Where no libvirtd answers, libvirtd and virtlogd are started under tini (libvirt/daemon.ts).
      const missing = await missingCommands([
        'virsh',
        '/usr/sbin/libvirtd',
        '/usr/sbin/virtlogd',
        'tini',
        'qemu-img',
      ]);
      if (missing.length > 0)
        return `missing programs: ${missing.join(', ')} (scripts/install-deps.sh installs them)`;
      return needsRoot('libvirt');
    },
    async services(_config, log) {
      const started = await ensureLibvirtd({ virsh: new Virsh(), log });
      return { stop: () => stopLibvirt(started) };
    },
  },
};

export const VMM_NAMES = Object.keys(DRIVERS) as VmmName[];
