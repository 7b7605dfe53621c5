import { capabilities } from '../driver.ts';

/**
 * How a libvirt domain's QEMU is confined, for callers and operators to see (G1's driver
 * capabilities report `jailed: false` for this driver). Warren's own jail (vmm/qemu/jail.ts) is
 * not applied: libvirtd starts QEMU itself, and its confinement is what there is.
 */
export const LIBVIRT_CONFINEMENT = {
  /** Not confined by Warren's jail (no pivot_root, no PID/network namespace, no rlimits). */
  jailedByWarren: false,
  /** What libvirt itself gives each domain, as configured by domain-xml.ts and libvirt's defaults. */
  provides: [
    "QEMU runs as the VM's own uid/gid (a static DAC seclabel), with no capabilities and no_new_privs",
    "QEMU's seccomp sandbox (-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny; qemu.conf seccomp_sandbox, on by default)",
    "a private mount namespace whose /dev holds only libvirt's device list (measured: full, kvm, null, ptmx, pts, random, shm, urandom, zero; qemu.conf namespaces, on by default)",
    'RLIMIT_CORE 0 (no core dumps of guest memory)',
    "the TAP opened by libvirtd and passed as a descriptor; the VM's disks owned by its uid, mode 0600",
  ],
  /** What Warren's jail gives and libvirt does not. */
  lacks: [
    'no pivot_root: QEMU sees the whole host filesystem, limited only by file permissions for its uid',
    "no PID, network, IPC or UTS namespace: QEMU sees the host's processes and network interfaces",
    "no RLIMIT_FSIZE: a QEMU taken over can grow the VM's own disks until the host's filesystem is full (NOFILE is libvirt's 20000)",
    'no cgroup devices controller in use here (measured: QEMU in devices:/ on this cgroup v1 host)',
    'libvirtd, a large daemon running as root, parses what a compromised QEMU sends on its monitor',
    "an operator's qemu.conf can weaken all of the above (seccomp_sandbox = 0, namespaces = [])",
  ],
} as const;

/**
 * This driver's capabilities: what it does today, not what libvirt could do. libvirt has internal
 * memory snapshots (`virsh snapshot-create-as`, ~0.2 s for a 256 MiB guest here) and
 * suspend/resume; neither is wired up, so both stay off. Limits come from the agent's cgroup,
 * which QEMU is moved into (not `ownsCgroups`).
 */
export const LIBVIRT_CAPABILITIES = capabilities({
  accelerators: ['kvm', 'tcg'],
  reAttach: true,
  jailed: LIBVIRT_CONFINEMENT.jailedByWarren,
});
