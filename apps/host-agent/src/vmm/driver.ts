import type { VerifiedImage } from '@warren/images';
import type { Accelerator } from '../accel.ts';
import type { CgroupHandle } from '../cgroups/cgroups.ts';
import type { GuestTransport } from '../guest/transport.ts';

/** The uid and gid a VM's VMM process runs as. */
export interface JailIds {
  uid: number;
  gid: number;
}

/** Everything a VMM needs to launch one VM; paths are inside the VM's own state directory. */
export interface VmLaunchSpec {
  id: string;
  /** The VM's state directory (sockets, logs, disks). */
  dir: string;
  image: VerifiedImage;
  cpus: number;
  memoryMiB: number;
  rootDisk: string;
  dataDisk: string;
  accel: Accelerator;
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
 * A virtual machine monitor backend. QEMU is the one built; libvirt and Firecracker fit
 * behind the same interface (their own launch/attach and transport), and the contract
 * tests in test/vm run against every driver listed there.
 */
export interface VmmDriver {
  readonly name: string;
  /** Creates the VM's writable root disk as a copy-on-write layer over the image rootfs. */
  createRootDisk(baseImage: string, target: string): Promise<void>;
  /** The longest unix socket path the driver uses for a VM in `dir` (the kernel allows 107 bytes). */
  longestSocketPath(dir: string): string;
  launch(spec: VmLaunchSpec): Promise<RunningVm>;
  /** Finds the VMM process of a VM that kept running while the host agent was down. */
  attach(spec: VmLaunchSpec): Promise<RunningVm | undefined>;
}
