import type { VerifiedImage } from '@warren/images';
import type { SnapshotMemory } from '@warren/protocol';
import type { Accelerator } from '../accel.ts';
import type { CgroupHandle } from '../cgroups/cgroups.ts';
import type { GuestTransport } from '../guest/transport.ts';

/** The uid and gid a VM's VMM process runs as. */
export interface JailIds {
  uid: number;
  gid: number;
}

/**
 * Everything a VMM needs to launch one VM. Where its disks, sockets and logs live inside `dir`
 * is the driver's business: the rest of the agent only knows the directory.
 */
export interface VmLaunchSpec {
  id: string;
  /** The VM's state directory; removing it removes the VM's files. */
  dir: string;
  image: VerifiedImage;
  cpus: number;
  memoryMiB: number;
  accel: Accelerator;
  /** The VM's cgroup, made by the agent with the VM's limits; absent when the driver owns cgroups or they are off. */
  cgroup?: CgroupHandle;
  /**
   * The unprivileged uid and gid this VM's VMM runs as, its own among the VMs of this host
   * (allocated at create, kept in vm.json, freed with the VM).
   */
  jail?: JailIds;
  /**
   * Opens the VM's own disks with O_DIRECT, so their I/O is the VMM's, charged to its cgroup
   * (cgroup v1 does not charge buffered writeback); set when an I/O limit is in force.
   */
  directIo?: boolean;
  /** A NIC on this pre-made TAP; `kernelArg` tells the guest its addresses. */
  network?: { tap: string; mac: string; kernelArg: string };
  /** The VM's disk layers (drivers with `diskSnapshots`); the initial pair when absent. */
  disks?: DiskChains;
  /** Starts the VM from a snapshot's memory and device state instead of booting it. */
  restore?: { dir: string; memory: SnapshotMemory };
  /**
   * Boots a template (vm/templates.ts): the guest is told so on its command line (it sets up
   * no network and no data volume), and with `nic` it gets a NIC connected to nothing, so that
   * the device layout matches that of the tenants with a NIC restored from it.
   */
  template?: { nic: boolean };
  /**
   * Skill package disks to attach read-only, in this order; the guest finds each by its
   * serial number, `skillDiskSerial(index)`.
   */
  skills?: { name: string; digest: string; path: string }[];
}

/** The serial number of the index-th skill disk (virtio-blk serials hold at most 20 bytes). */
export function skillDiskSerial(index: number): string {
  return `wsk-${index}`;
}

/**
 * The layers of a VM's two disks, as paths relative to its directory, bottom to top: the last
 * is the one the VM writes, the ones below are frozen by snapshots. The root disk's chain sits
 * on the image's rootfs. A VM never snapshotted has `{ root: ['root.qcow2'], data: ['data.img'] }`.
 */
export interface DiskChains {
  root: string[];
  data: string[];
}

export type DiskName = keyof DiskChains;
export const DISK_NAMES: readonly DiskName[] = ['root', 'data'];

/**
 * Thrown by `freezeDisks` when the VMM refused the switch, so the VM still writes its old tops
 * (`cause` says why). Any other failure leaves it unknown whether the switch happened.
 */
export class DisksNotSwitched extends Error {
  constructor(cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
  }
}

/** What a snapshot leaves behind besides its files. */
export interface SnapshotTaken {
  memory: SnapshotMemory;
  /** How long the guest was paused. */
  pausedMs: number;
}

/** What a new VM's disks are made from. */
export interface VmDiskSpec {
  /** The image's raw root filesystem, read-only and shared by every VM of the image. */
  baseImage: string;
  /** Size of the VM's persistent data volume, mounted at /workspace in the guest. */
  dataMiB: number;
}

export interface VmExit {
  /** Exit code of the VMM process, when known. */
  code: number | null;
  signal: string | null;
  /** Why it ended, in words: `guest powered off`, `killed by SIGKILL`, ... */
  reason: string;
  /** True when the guest or the host asked for the exit; false for crashes and kills. */
  graceful: boolean;
}

/** A VMM process that runs (or ran) one VM. */
export interface RunningVm {
  readonly pid: number;
  readonly transport: GuestTransport;
  /** Settles when the VMM process has ended, however that happened. */
  readonly exited: Promise<VmExit>;
  /** Asks the VMM to end now (the guest gets no say). */
  quit(): Promise<void>;
  /** SIGKILL to the VMM process. */
  kill(): void;
  /** Lets go of the process without stopping it, e.g. when the host agent shuts down. */
  detach(): void;
}

/**
 * What a driver can do. Callers ask these instead of comparing driver names; anything a driver
 * does not declare is off (`capabilities()` fills the safe defaults), so a new driver is never
 * assumed to do more than it says.
 */
export interface VmmCapabilities {
  /** Accelerators it can run guests with; the host's choice must be one of them. */
  accelerators: readonly Accelerator[];
  /** A VM keeps running when the agent stops, and `attach` finds it again. */
  reAttach: boolean;
  /** Can save a running guest's memory and device state, and start a VM from them (`snapshot`, `restore`). */
  memorySnapshots: boolean;
  /** Can freeze a VM's disks under new copy-on-write layers (`snapshot`, `newTops`). */
  diskSnapshots: boolean;
  /** Can pause a running guest and resume it later. */
  liveSuspend: boolean;
  /**
   * Can save a running guest's memory and device state without touching its disks and end its
   * VMM (`suspend`), and start it again from them (a launch with `restore`): idle reclamation.
   */
  suspend: boolean;
  /** Can reach the guest over vsock (otherwise: a virtio-serial port behind a unix socket). */
  vsock: boolean;
  /** Runs each VMM in Warren's own jail (vmm/qemu/jail.ts: namespaces, own root, own uid). */
  jailed: boolean;
  /**
   * Applies the VM's CPU, memory and pids limits itself; the agent then makes no cgroup for it
   * and passes none in the launch spec.
   */
  ownsCgroups: boolean;
}

const SAFE_DEFAULTS: VmmCapabilities = {
  accelerators: ['tcg'],
  reAttach: false,
  memorySnapshots: false,
  diskSnapshots: false,
  liveSuspend: false,
  suspend: false,
  vsock: false,
  jailed: false,
  ownsCgroups: false,
};

/** A driver's capabilities: what it declares, the safe default (off) for the rest. */
export function capabilities(declared: Partial<VmmCapabilities>): VmmCapabilities {
  return { ...SAFE_DEFAULTS, ...declared };
}

/**
 * A virtual machine monitor backend: everything that differs between VMMs (disk layout and
 * formats, sockets, console, how the guest channel is reached, confinement) is behind this.
 * The agent keeps VM records, networking and the lifecycle (vm/), and only ever hands a driver
 * the VM's directory and a launch spec. Drivers are listed in drivers.ts, and the contract
 * suite (test/vm/vmm-contract.test.ts) runs against each of them.
 */
export interface VmmDriver {
  readonly name: string;
  readonly capabilities: VmmCapabilities;
  /** Makes the host ready once, before the first attach or launch (e.g. starts a daemon). */
  open?(): Promise<void>;
  /** Lets go of what `open` holds (event streams); VMs keep running. */
  close?(): void;
  /**
   * Creates a new VM's disks in `dir`: a copy-on-write root over the image and an empty data
   * volume. `dir` is renamed into place afterwards, so nothing may refer to it by path.
   */
  createDisks(dir: string, disks: VmDiskSpec): Promise<void>;
  /** The longest unix socket path the driver uses for a VM in `dir` (the kernel allows 107 bytes). */
  longestSocketPath(dir: string): string;
  /** The file holding the guest's serial console, named in boot failures. */
  consoleLog(dir: string): string;
  /**
   * Names in a VM directory whose modes the driver sets itself at each launch (a jail its VMM's
   * uid must traverse); the agent's start-up lock-down of the data directory skips them.
   */
  readonly ownModes?: readonly string[];
  launch(spec: VmLaunchSpec): Promise<RunningVm>;
  /**
   * Finds the VMM of a VM that kept running while the host agent was down (drivers with
   * `reAttach`). A guest found paused by a snapshot cut short is resumed, unless `resume` is
   * false (a suspend cut short: its state is saved and the VMM is to end, not run on).
   */
  attach(spec: VmLaunchSpec, options?: { resume?: boolean }): Promise<RunningVm | undefined>;
  /**
   * Takes a snapshot of a running VM into `dir` (a new, empty directory): pauses the guest,
   * saves its memory and device state, moves its disks onto `tops` (made by `newTops` over
   * `spec.disks`), and resumes it. Drivers with `memorySnapshots` and `diskSnapshots`.
   */
  snapshot?(
    vm: RunningVm,
    spec: VmLaunchSpec,
    dir: string,
    tops: DiskChains,
    options?: { memory?: 'stream' },
  ): Promise<SnapshotTaken>;
  /**
   * Tells the guest that its disks may have changed size (a virtio config change), so that a
   * guest restored from a template reads the size of its own data volume. Drivers with
   * `memorySnapshots`.
   */
  announceDiskSizes?(vm: RunningVm, spec: VmLaunchSpec): Promise<void>;
  /**
   * Saves a running VM's memory and device state into `dir` (a new, empty directory) without
   * adding disk layers, and leaves the guest paused with its disks flushed: the caller records
   * the suspend and then ends the VMM (`quit`). A failure resumes the guest. A later launch with
   * `restore: { dir, memory }` on the same chains wakes it. Drivers with `suspend`.
   */
  suspend?(vm: RunningVm, spec: VmLaunchSpec, dir: string): Promise<SnapshotTaken>;
  /**
   * New empty top layers over `frozen` (over each of `disks`, both by default), for a VM that is
   * not running (a revert) or for `freezeDisks`; returns the chains with them.
   */
  newTops?(
    dir: string,
    frozen: DiskChains,
    image: VerifiedImage,
    disks?: readonly DiskName[],
  ): Promise<DiskChains>;
  /**
   * Moves a running VM's disks onto `tops` (made by `newTops` over `spec.disks`) at one instant,
   * without pausing the guest: afterwards the layers below the new tops no longer change. A
   * backup's point in time. Drivers with `diskSnapshots`.
   */
  freezeDisks?(vm: RunningVm, spec: VmLaunchSpec, tops: DiskChains): Promise<void>;
  /**
   * Merges frozen layers 1..`count` of a running VM's `disk` chain (`spec.disks`) into its layer
   * 0, the guest running on; the chain is then layer 0 and the layers above `count`. Drivers
   * with `diskSnapshots`.
   */
  mergeLayers?(vm: RunningVm, spec: VmLaunchSpec, disk: DiskName, count: number): Promise<void>;
  /** Removes what the driver keeps of a VM outside its directory; called when the VM is destroyed, after it ended. */
  forget?(id: string, dir: string): Promise<void>;
  /**
   * What of the VM the backend still holds outside its directory, in words (`libvirt domain
   * warren-x`); empty once it is destroyed. The contract suite checks destroy leaves nothing.
   */
  traces?(id: string, dir: string): Promise<string[]>;
}
