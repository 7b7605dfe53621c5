import { AGENT_PORT_NAME } from '@warren/protocol';
import type { VmLaunchSpec } from '../driver.ts';

export const QEMU_FILES = {
  qmp: 'qmp.sock',
  agent: 'agent.sock',
  console: 'console.log',
  log: 'qemu.log',
  pid: 'qemu.pid',
} as const;

/** A marker in QEMU's command line that ties a process to its VM when re-attaching. */
export function processName(id: string): string {
  return `warren-vm-${id}`;
}

export interface QemuArgOptions {
  tcgTranslationCacheMiB: number;
  /** Host TSC frequency; under TCG the guest's TSC runs at it. */
  hostTscKHz?: number;
}

export function qemuArgs(spec: VmLaunchSpec, options: QemuArgOptions): string[] {
  const f = (name: keyof typeof QEMU_FILES) => `${spec.dir}/${QEMU_FILES[name]}`;
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
    // Defence in depth: seccomp filter denying what a VMM never needs.
    '-sandbox',
    'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    '-kernel',
    spec.image.kernelPath,
    '-initrd',
    spec.image.initrdPath,
    '-append',
    cmdline,
    '-drive',
    `id=root,file=${spec.rootDisk},format=qcow2,if=none,discard=unmap`,
    '-device',
    'virtio-blk-device,drive=root',
    '-drive',
    `id=data,file=${spec.dataDisk},format=raw,if=none,discard=unmap`,
    '-device',
    'virtio-blk-device,drive=data',
    '-device',
    'virtio-rng-device',
    // A TAP the host agent made and firewalled; QEMU runs no scripts (and its sandbox forbids spawning).
    ...(spec.network
      ? [
          '-netdev',
          `tap,id=net0,ifname=${spec.network.tap},script=no,downscript=no,vhost=off`,
          '-device',
          `virtio-net-device,netdev=net0,mac=${spec.network.mac}`,
        ]
      : []),
    '-device',
    'virtio-serial-device',
    '-chardev',
    `socket,id=agent,path=${f('agent')},server=on,wait=off`,
    '-device',
    `virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`,
    '-chardev',
    `file,id=console,path=${f('console')}`,
    '-serial',
    'chardev:console',
    '-qmp',
    `unix:${f('qmp')},server=on,wait=off`,
  ];
}
