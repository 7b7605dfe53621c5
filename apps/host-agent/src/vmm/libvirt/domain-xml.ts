import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';
import { AGENT_PORT_NAME } from '@warren/protocol';
import type { VmLaunchSpec } from '../driver.ts';
import { vmDisks } from '../vm-disks.ts';

/** Files of a VM under the libvirt driver, in its VM directory. libvirtd (root) creates the sockets. */
export const LIBVIRT_FILES = {
  /** The domain XML last given to `virsh create`, kept for operators and for debugging. */
  domain: 'domain.xml',
  agent: 'agent.sock',
  console: 'console.sock',
  consoleLog: 'console.log',
} as const;

/** The XML namespace of Warren's `<metadata>` element; libvirt keeps it with the domain. */
export const WARREN_XMLNS = 'https://warren.dev/xmlns/libvirt/vm/1';

/** CPU time is given per 100 ms period, the kernel's default CFS period (as in cgroups.ts). */
const CPU_PERIOD_US = 100_000;

export interface DomainXmlOptions {
  /** Under TCG: the translation block cache, in MiB (QEMU's own default is 1 GiB per VM). */
  tcgTranslationCacheMiB: number;
  /** Host TSC frequency; under TCG the guest's TSC runs at it. */
  hostTscKHz?: number;
  /** Path of the qemu-system-x86_64 binary libvirt runs. */
  emulator: string;
}

/**
 * The domain name of a VM: `warren-<8 hex of the VM's parent directory>-<id>`. The hash of the
 * agent's `vms/` directory keeps two host agents with different data directories (tests run
 * several) from ever touching each other's domains, which share one libvirtd namespace.
 */
export function domainName(spec: Pick<VmLaunchSpec, 'id' | 'dir'>): string {
  const owner = createHash('sha256').update(dirname(spec.dir)).digest('hex').slice(0, 8);
  return `warren-${owner}-${spec.id}`;
}

/** The prefix every domain of one agent's `vms/` directory has (for listing them). */
export function domainPrefix(vmsDir: string): string {
  return domainName({ id: '', dir: join(vmsDir, 'x') });
}

/** XML-escapes text and attribute values: every value that comes from a spec goes through it. */
export function xmlEscape(value: string | number): string {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&apos;');
}

/** The kernel command line, the same pieces as the QEMU driver's (qemu-args.ts). */
export function kernelCmdline(spec: VmLaunchSpec, hostTscKHz: number | undefined): string {
  return [
    'console=ttyS0',
    spec.image.manifest.cmdline,
    // Under TCG the guest's TSC calibration against the PIT fails now and then; telling it the rate skips that.
    ...(spec.accel === 'tcg' && hostTscKHz ? [`tsc_early_khz=${hostTscKHz}`] : []),
    `warren.hostname=${spec.id}`,
    // The platform firewall drops IPv6 from VMs; a guest without it does not try and wait.
    ...(spec.network ? ['ipv6.disable=1', spec.network.kernelArg] : []),
  ].join(' ');
}

/**
 * The domain XML of a VM: a `microvm` machine (no PCI, no legacy devices; virtio-mmio devices
 * found through ACPI), as the QEMU driver runs. libvirt 9 supports microvm when every virtio
 * device has a virtio-mmio address and USB is off; q35 would add a PCI bus, firmware tables and
 * about 0.3 s of boot for nothing these VMs use.
 *
 * Confinement: the domain carries a static DAC label with the VM's own uid and gid, so its QEMU
 * runs as that uid (not as root, not as a uid shared by all VMs), and `relabel='no'` so libvirt
 * never chowns anything: left to itself it chowns the image store's shared kernel, initrd and
 * rootfs to the VM's uid (and did not give the rootfs back after a destroy, measured on libvirt
 * 9.0), which would let one VM's QEMU rewrite every VM's image. The driver chowns the VM's own
 * two disks itself, as the QEMU jail does.
 */
export function domainXml(spec: VmLaunchSpec, options: DomainXmlOptions): string {
  const e = xmlEscape;
  if (!spec.jail) throw new Error(`VM ${spec.id} has no uid to run its QEMU as`);
  const { uid, gid } = spec.jail;
  const mmio = "<address type='virtio-mmio'/>";
  // cache='none' opens the VM's disks with O_DIRECT, so their I/O is charged to its cgroup.
  const cache = spec.directIo ? " cache='none'" : '';
  const tcg = spec.accel === 'tcg';
  const lines = [
    `<domain type='${tcg ? 'qemu' : 'kvm'}'>`,
    `  <name>${e(domainName(spec))}</name>`,
    '  <metadata>',
    `    <warren:vm xmlns:warren='${WARREN_XMLNS}'>`,
    `      <warren:id>${e(spec.id)}</warren:id>`,
    `      <warren:dir>${e(spec.dir)}</warren:dir>`,
    '    </warren:vm>',
    '  </metadata>',
    `  <memory unit='MiB'>${e(spec.memoryMiB)}</memory>`,
    `  <vcpu placement='static'>${e(spec.cpus)}</vcpu>`,
    // The whole domain gets `cpus` CPUs of time per period, the same limit as the VM's cgroup.
    '  <cputune>',
    `    <global_period>${CPU_PERIOD_US}</global_period>`,
    `    <global_quota>${Math.round(spec.cpus * CPU_PERIOD_US)}</global_quota>`,
    '  </cputune>',
    '  <os>',
    "    <type arch='x86_64' machine='microvm'>hvm</type>",
    `    <kernel>${e(spec.image.kernelPath)}</kernel>`,
    `    <initrd>${e(spec.image.initrdPath)}</initrd>`,
    `    <cmdline>${e(kernelCmdline(spec, options.hostTscKHz))}</cmdline>`,
    '  </os>',
    '  <features>',
    '    <acpi/>',
    ...(tcg
      ? [
          '    <tcg>',
          `      <tb-cache unit='MiB'>${e(options.tcgTranslationCacheMiB)}</tb-cache>`,
          '    </tcg>',
        ]
      : []),
    '  </features>',
    ...(tcg ? [] : ["  <cpu mode='host-passthrough'/>"]),
    // Every way the guest ends ends the domain (QEMU's -no-reboot): the host agent decides what comes next.
    '  <on_poweroff>destroy</on_poweroff>',
    '  <on_reboot>destroy</on_reboot>',
    '  <on_crash>destroy</on_crash>',
    '  <devices>',
    `    <emulator>${e(options.emulator)}</emulator>`,
    "    <controller type='usb' model='none'/>",
    // The image's rootfs is named as the overlay's backing store, read-only and shared.
    "    <disk type='file' device='disk'>",
    `      <driver name='qemu' type='qcow2' discard='unmap'${cache}/>`,
    `      <source file='${e(vmDisks(spec.dir).root)}'/>`,
    "      <backingStore type='file'>",
    "        <format type='raw'/>",
    `        <source file='${e(spec.image.rootfsPath)}'/>`,
    '        <backingStore/>',
    '      </backingStore>',
    "      <target dev='vda' bus='virtio'/>",
    `      ${mmio}`,
    '    </disk>',
    "    <disk type='file' device='disk'>",
    `      <driver name='qemu' type='raw' discard='unmap'${cache}/>`,
    `      <source file='${e(vmDisks(spec.dir).data)}'/>`,
    "      <target dev='vdb' bus='virtio'/>",
    `      ${mmio}`,
    '    </disk>',
    ...(spec.network
      ? [
          // The TAP the host agent made and firewalled; libvirtd opens it and hands QEMU the descriptor.
          "    <interface type='ethernet'>",
          `      <mac address='${e(spec.network.mac)}'/>`,
          `      <target dev='${e(spec.network.tap)}' managed='no'/>`,
          "      <model type='virtio'/>",
          "      <driver name='qemu'/>",
          `      ${mmio}`,
          '    </interface>',
        ]
      : []),
    "    <controller type='virtio-serial' index='0'>",
    `      ${mmio}`,
    '    </controller>',
    "    <channel type='unix'>",
    `      <source mode='bind' path='${e(join(spec.dir, LIBVIRT_FILES.agent))}'/>`,
    `      <target type='virtio' name='${e(AGENT_PORT_NAME)}'/>`,
    '    </channel>',
    // The serial console goes to the host agent, which writes a size-capped log (console-log.ts);
    // with no agent connected QEMU drops it, so a guest can never fill the host's disk with it.
    "    <serial type='unix'>",
    `      <source mode='bind' path='${e(join(spec.dir, LIBVIRT_FILES.console))}'/>`,
    "      <target port='0'/>",
    '    </serial>',
    "    <rng model='virtio'>",
    "      <backend model='random'>/dev/urandom</backend>",
    `      ${mmio}`,
    '    </rng>',
    "    <memballoon model='none'/>",
    '  </devices>',
    "  <seclabel type='static' model='dac' relabel='no'>",
    `    <label>+${e(uid)}:+${e(gid)}</label>`,
    '  </seclabel>',
    '</domain>',
  ];
  return `${lines.join('\n')}\n`;
}

/**
 * The VM directory recorded in a domain's Warren metadata, or undefined when the domain has none
 * (not Warren's). Reads `virsh dumpxml` output, which libvirt writes with its own namespace prefix.
 */
export function metadataDir(xml: string): string | undefined {
  const ns = xml.match(/<(\w+):vm\s+xmlns:\1=(['"])([^'"]*)\2/);
  if (!ns || ns[3] !== WARREN_XMLNS) return undefined;
  const prefix = ns[1];
  const dir = new RegExp(`<${prefix}:dir>([^<]*)</${prefix}:dir>`).exec(xml)?.[1];
  return dir === undefined ? undefined : xmlUnescape(dir);
}

function xmlUnescape(text: string): string {
  return text
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&quot;', '"')
    .replaceAll('&apos;', "'")
    .replaceAll('&amp;', '&');
}
