import { AGENT_PORT_NAME } from '@warren/protocol';
import type { VmLaunchSpec } from '../driver.ts';

/** Files of a VM that stay outside its jail, in the VM directory: only the host agent touches them. */
export const QEMU_FILES = {
  console: 'console.log',
  log: 'qemu.log',
  pid: 'qemu.pid',
  /** The directory QEMU is confined to (see jail.ts). */
  jail: 'jail',
} as const;

/**
 * Paths as QEMU sees them, inside its jail: it is pivot_rooted into `<vmdir>/jail`, so `/` is
 * that directory. The sockets live in `/sock`, the one directory QEMU may create files in.
 */
export const JAIL_PATHS = {
  kernel: '/kernel',
  initrd: '/initrd',
  rootfs: '/rootfs',
  rootDisk: '/root.qcow2',
  dataDisk: '/data.img',
  sockets: '/sock',
  qmp: '/sock/qmp.sock',
  agent: '/sock/agent.sock',
  console: '/sock/console.sock',
} as const;

/** A marker in QEMU's command line that ties a process to its VM when re-attaching. */
export function processName(id: string): string {
  return `warren-vm-${id}`;
}

export interface QemuArgOptions {
  tcgTranslationCacheMiB: number;
  /** Host TSC frequency; under TCG the guest's TSC runs at it. */
  hostTscKHz?: number;
  /** The descriptor of the VM's TAP, opened by the launcher before QEMU lost its privileges. */
  tapFd?: number;
}

export function qemuArgs(spec: VmLaunchSpec, options: QemuArgOptions): string[] {
  const cmdline = [
    'console=ttyS0',
    spec.image.manifest.cmdline,
    // Under TCG the guest's TSC calibration against the PIT fails now and then (emulated
    // timers jitter on a busy host) and the kernel stalls; telling it the rate skips that.
    ...(spec.accel === 'tcg' && options.hostTscKHz ? [`tsc_early_khz=${options.hostTscKHz}`] : []),
    `warren.hostname=${spec.id}`,
    // The platform firewall drops IPv6 from VMs; a guest without it does not try and wait.
    ...(spec.network ? ['ipv6.disable=1', spec.network.kernelArg] : []),
  ].join(' ');
  // The image's rootfs stays in the page cache, shared by every VM of the image.
  const direct = spec.directIo ? ',cache.direct=on' : '';
  if (spec.network && options.tapFd === undefined)
    throw new Error('a VM with a NIC needs its TAP descriptor');
  return [
    '-name',
    `${processName(spec.id)},debug-threads=on`,
    // microvm: no PCI, no legacy devices; virtio-mmio devices found through ACPI.
    '-M',
    'microvm,acpi=on',
    // TCG: QEMU's default CPU model; `-cpu max` stalls the guest's TSC calibration on microvm.
    ...(spec.accel === 'kvm'
      ? ['-accel', 'kvm', '-cpu', 'host']
      : ['-accel', `tcg,tb-size=${options.tcgTranslationCacheMiB}`]),
    '-smp',
    String(spec.cpus),
    '-m',
    `${spec.memoryMiB}M`,
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    '-no-reboot',
    // Starts paused: the host agent connects the console before the guest's first output.
    '-S',
    // Defence in depth: seccomp filter denying what a VMM never needs.
    '-sandbox',
    'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    '-kernel',
    JAIL_PATHS.kernel,
    '-initrd',
    JAIL_PATHS.initrd,
    '-append',
    cmdline,
    // The image's rootfs is named as the overlay's backing node here, because the path stored
    // in root.qcow2 is the image store's, which does not exist inside the jail.
    '-blockdev',
    `driver=raw,node-name=rootfs,read-only=on,file.driver=file,file.filename=${JAIL_PATHS.rootfs}`,
    '-blockdev',
    `driver=qcow2,node-name=root,backing=rootfs,discard=unmap${direct},file.driver=file,file.filename=${JAIL_PATHS.rootDisk}`,
    '-device',
    'virtio-blk-device,drive=root',
    '-blockdev',
    `driver=raw,node-name=data,discard=unmap${direct},file.driver=file,file.filename=${JAIL_PATHS.dataDisk}`,
    '-device',
    'virtio-blk-device,drive=data',
    '-device',
    'virtio-rng-device',
    // The TAP the host agent made and firewalled, already opened: QEMU runs in an empty network
    // namespace without /dev/net/tun, so this descriptor is its only way to any network.
    ...(spec.network
      ? [
          '-netdev',
          `tap,id=net0,fd=${options.tapFd},vhost=off`,
          '-device',
          `virtio-net-device,netdev=net0,mac=${spec.network.mac}`,
        ]
      : []),
    '-device',
    'virtio-serial-device',
    '-chardev',
    `socket,id=agent,path=${JAIL_PATHS.agent},server=on,wait=off`,
    '-device',
    `virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`,
    // The serial console goes to the host agent, which writes a size-capped log (console-log.ts);
    // with no agent connected QEMU drops it, so a guest can never fill the host's disk with it.
    '-chardev',
    `socket,id=console,path=${JAIL_PATHS.console},server=on,wait=off`,
    '-serial',
    'chardev:console',
    '-qmp',
    `unix:${JAIL_PATHS.qmp},server=on,wait=off`,
  ];
}
