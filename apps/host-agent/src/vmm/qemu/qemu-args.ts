import { basename } from 'node:path';
import { AGENT_PORT_NAME } from '@warren/protocol';
import { type DiskChains, skillDiskSerial, type VmLaunchSpec } from '../driver.ts';
import { INITIAL_CHAINS, layerFormat } from '../vm-disks.ts';

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
/** A skill disk's path inside the jail (its index in the launch spec). */
export function jailPathOfSkill(index: number): string {
  return `/skill-${index}.img`;
}

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
  /** The host agent listens here for a snapshot's device state (QEMU connects out). */
  save: '/sock/save.sock',
  /** QEMU listens here for the device state of the snapshot it starts from. */
  incoming: '/sock/incoming.sock',
  /** A snapshot's memory file, mapped privately by a VM restored from it. */
  snapshotMemory: '/snapshot.mem',
} as const;

/** Tells the guest's sysinit it is booting a template: no network, no data volume (rootfs.ts). */
export const TEMPLATE_KERNEL_ARG = 'warren.template=1';
/**
 * The MAC of a template's NIC (locally administered). A tenant restored from it has it until
 * the guest agent sets the tenant's own (IdentityRequest), before the host lets it reach anyone.
 */
export const TEMPLATE_MAC = '02:57:52:00:00:01';

/** The id of the memory backend object holding guest RAM. */
export const RAM_OBJECT = 'ram';

/** A layer's path inside the jail: the original disks are bound in, later layers live in it. */
export function jailPathOfLayer(layer: string): string {
  if (layer === INITIAL_CHAINS.root[0]) return JAIL_PATHS.rootDisk;
  if (layer === INITIAL_CHAINS.data[0]) return JAIL_PATHS.dataDisk;
  if (!layer.startsWith(`${QEMU_FILES.jail}/`)) throw new Error(`disk layer ${layer} is outside the jail`);
  return layer.slice(QEMU_FILES.jail.length);
}

/**
 * Block node names: layer 0 keeps the names VMs had before snapshots existed (`root`, `data`),
 * so a QEMU started by an earlier agent can be snapshotted too. A layer above it is named for
 * its file (`data-3d3f02977a29` for `jail/disks/data-3d3f02977a29.qcow2`), so its name stays
 * the same when layers below it are merged away in a running QEMU; agents before that named
 * them by position (`data-1`), and QEMUs they started still do (`positionalNode`).
 */
export function layerNode(disk: 'root' | 'data', index: number, layer: string): string {
  if (index === 0) return disk;
  const name = basename(layer).replace(/\.(qcow2|img)$/, '');
  return name.startsWith(`${disk}-`) && /^[a-z][a-z0-9_-]{0,30}$/.test(name)
    ? name
    : positionalNode(disk, index);
}

/** The name earlier agents gave layer `index` of a disk. */
export function positionalNode(disk: 'root' | 'data', index: number): string {
  return index === 0 ? disk : `${disk}-${index}`;
}

/** -blockdev arguments for one disk's chain; the top is the node the device uses. */
function chainArgs(disk: 'root' | 'data', chain: string[], direct: string): { args: string[]; top: string } {
  const args: string[] = [];
  chain.forEach((layer, i) => {
    const top = i === chain.length - 1;
    const file = `file.driver=file,file.filename=${jailPathOfLayer(layer)}`;
    // Frozen layers are read-only to QEMU; only the top takes writes.
    const mode = top ? `discard=unmap${direct}` : 'read-only=on';
    const backing =
      layerFormat(layer) === 'qcow2'
        ? `,backing=${i === 0 ? 'rootfs' : layerNode(disk, i - 1, chain[i - 1]!)}`
        : '';
    args.push(
      '-blockdev',
      `driver=${layerFormat(layer)},node-name=${layerNode(disk, i, layer)}${backing},${mode},${file}`,
    );
  });
  return { args, top: layerNode(disk, chain.length - 1, chain.at(-1)!) };
}

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
    // Freed memory is zeroed, so a page that held a secret (a wiped credential, an exited
    // process's heap) shows nothing in a snapshot's memory file.
    'init_on_free=1',
    // The platform firewall drops IPv6 from VMs; a guest without it does not try and wait.
    ...(spec.network ? ['ipv6.disable=1', spec.network.kernelArg] : []),
    ...(spec.template ? [TEMPLATE_KERNEL_ARG, ...(spec.template.nic ? ['ipv6.disable=1'] : [])] : []),
  ].join(' ');
  // The image's rootfs stays in the page cache, shared by every VM of the image.
  const direct = spec.directIo ? ',cache.direct=on' : '';
  const chains: DiskChains = spec.disks ?? INITIAL_CHAINS;
  const root = chainArgs('root', chains.root, direct);
  const data = chainArgs('data', chains.data, direct);
  if (spec.network && options.tapFd === undefined)
    throw new Error('a VM with a NIC needs its TAP descriptor');
  return [
    '-name',
    `${processName(spec.id)},debug-threads=on`,
    // microvm: no PCI, no legacy devices; virtio-mmio devices found through ACPI.
    '-M',
    `microvm,acpi=on,memory-backend=${RAM_OBJECT}`,
    // TCG: QEMU's default CPU model; `-cpu max` stalls the guest's TSC calibration on microvm.
    ...(spec.accel === 'kvm'
      ? ['-accel', 'kvm', '-cpu', 'host']
      : ['-accel', `tcg,tb-size=${options.tcgTranslationCacheMiB}`]),
    '-smp',
    String(spec.cpus),
    '-m',
    `${spec.memoryMiB}M`,
    ...memoryArgs(spec),
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
    // in root.qcow2 is the image store's, which does not exist inside the jail; every layer
    // above gets its backing by node name too.
    '-blockdev',
    `driver=raw,node-name=rootfs,read-only=on,file.driver=file,file.filename=${JAIL_PATHS.rootfs}`,
    ...root.args,
    '-device',
    `virtio-blk-device,drive=${root.top}`,
    ...data.args,
    '-device',
    `virtio-blk-device,drive=${data.top}`,
    // Skill packages: read-only disks after the two of every VM (so those stay vda and vdb),
    // each with a serial number by which the guest finds it.
    ...(spec.skills ?? []).flatMap((_, i) => [
      '-blockdev',
      `driver=raw,node-name=skill${i},read-only=on,file.driver=file,file.filename=${jailPathOfSkill(i)}`,
      '-device',
      `virtio-blk-device,drive=skill${i},serial=${skillDiskSerial(i)}`,
    ]),
    '-device',
    'virtio-rng-device',
    // The TAP the host agent made and firewalled, already opened: QEMU runs in an empty network
    // namespace without /dev/net/tun, so this descriptor is its only way to any network.
    ...(spec.template?.nic
      ? [
          // A hub port with nothing else on the hub: the NIC exists, and no packet goes anywhere.
          '-netdev',
          'hubport,id=net0,hubid=0',
          '-device',
          `virtio-net-device,netdev=net0,mac=${TEMPLATE_MAC}`,
        ]
      : []),
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
    // A restore waits for its device state, which the host agent sends over QMP's migrate-incoming.
    ...(spec.restore ? ['-incoming', 'defer'] : []),
  ];
}

/**
 * Guest RAM. A booted VM's is a memfd, shared, so a snapshot can leave it out of the migration
 * stream (x-ignore-shared) and copy it as a sparse file instead. A VM restored from such a file
 * maps it privately: pages are read on demand and the file is never written.
 */
function memoryArgs(spec: VmLaunchSpec): string[] {
  const size = `size=${spec.memoryMiB}M`;
  if (spec.restore?.memory === 'mapped')
    return [
      '-object',
      `memory-backend-file,id=${RAM_OBJECT},${size},mem-path=${JAIL_PATHS.snapshotMemory},share=off`,
    ];
  return ['-object', `memory-backend-memfd,id=${RAM_OBJECT},${size}`];
}
