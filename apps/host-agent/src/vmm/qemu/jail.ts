import { constants } from 'node:fs';
import {
  access,
  chmod,
  chown,
  copyFile,
  lstat,
  mkdir,
  readlink,
  realpath,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { WarrenError } from '@warren/protocol';
import type { JailIds, VmLaunchSpec } from '../driver.ts';
import { INITIAL_CHAINS, layersDir, vmDisks } from '../vm-disks.ts';
import { JAIL_PATHS, jailPathOfSkill, QEMU_FILES } from './qemu-args.ts';

/** A snapshot's memory file, in the snapshot's directory. */
export const SNAPSHOT_MEMORY_FILE = 'memory';

/**
 * How each VM's QEMU is confined, after Firecracker's jailer: the host agent (root) prepares
 * `<vmdir>/jail/`, and a launcher shell run as root
 *   1. joins the VM's cgroups (so QEMU is limited from its first instruction),
 *   2. opens the VM's TAP and keeps it as fd 3 (QEMU gets the descriptor, not /dev/net/tun),
 *   3. unshares mount, PID, IPC, UTS and network namespaces (QEMU becomes PID 1 of its own PID
 *      namespace and has an empty network namespace: the TAP descriptor is its only network),
 *   4. in the private mount namespace, bind-mounts into the jail only what QEMU needs, read-only
 *      where it can be: /usr (QEMU, its libraries and firmware), the image's kernel, initrd and
 *      rootfs, the VM's two disks, and a /dev holding null, zero, urandom (and kvm),
 *   5. pivot_roots into the jail and detaches the host's root, so no path leads out of it,
 *   6. sets rlimits and drops to the VM's own uid/gid with no groups, no capabilities (bounding
 *      set included) and no_new_privs, and execs QEMU, which adds its seccomp filter.
 * The mounts exist only in QEMU's namespace and vanish with it: the host never sees them, so
 * removing a VM's directory can never reach through a bind mount into the image store.
 */

/** The fd the launcher opens the TAP on; QEMU gets it as `-netdev tap,fd=3`. */
export const TAP_FD = 3;
/** Enough for QEMU's disks, sockets, eventfds and threads' descriptors; far below the default hard limit. */
const NOFILE = 1024;
/** Room in RLIMIT_FSIZE above the largest disk: qcow2 metadata (L2 and refcount tables) and qemu.log. */
const FSIZE_SLACK_BYTES = 256 * 1024 * 1024;
/** Host top-level entries the dynamic loader may use: symlinks into /usr (merged /usr) or directories to bind. */
const LIB_ENTRIES = ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'];

export function jailDirOf(vmDir: string): string {
  return join(vmDir, QEMU_FILES.jail);
}

/** The host path of a file QEMU sees at `inJail` (an absolute path inside its jail). */
export function hostPathOf(vmDir: string, inJail: string): string {
  return join(jailDirOf(vmDir), inJail);
}

export interface Launcher {
  /**
   * Two root shell scripts for the VM directory: `launch.sh`, run by the agent, and `jail.sh`,
   * run by it in the new namespaces. In files rather than on a command line, so that only QEMU's
   * own command line names the VM (the agent and tests find a VM's QEMU by it).
   */
  scripts: { 'launch.sh': string; 'jail.sh': string };
  env: Record<string, string>;
}

/**
 * Builds the jail's skeleton (mount points, the socket directory) and hands the VM's disks to
 * its uid; idempotent, run before every launch.
 */
export async function prepareJail(spec: VmLaunchSpec, ids: JailIds): Promise<{ libDirs: string[] }> {
  const jail = jailDirOf(spec.dir);
  // Owned by root and not writable by QEMU: the socket directory is the only place it can create files.
  await mkdir(jail, { recursive: true, mode: 0o755 });
  await chown(jail, 0, 0);
  await chmod(jail, 0o755);
  for (const f of [
    JAIL_PATHS.kernel,
    JAIL_PATHS.initrd,
    JAIL_PATHS.rootfs,
    JAIL_PATHS.rootDisk,
    JAIL_PATHS.dataDisk,
    JAIL_PATHS.snapshotMemory,
  ]) {
    await writeFile(join(jail, f), '', { flag: 'a', mode: 0o400 });
  }
  await mkdir(join(jail, 'usr'), { recursive: true });
  await mkdir(join(jail, 'dev'), { recursive: true });
  // A QEMU killed by SIGKILL leaves its sockets; a fresh directory also drops whatever an earlier QEMU put there.
  const sockets = join(jail, JAIL_PATHS.sockets);
  await rm(sockets, { recursive: true, force: true });
  await mkdir(sockets, { mode: 0o700 });
  await chown(sockets, ids.uid, ids.gid);
  const libDirs: string[] = [];
  for (const name of LIB_ENTRIES) {
    const host = await lstat(`/${name}`).catch(() => undefined);
    if (!host) continue;
    const inJail = join(jail, name);
    const existing = await lstat(inJail).catch(() => undefined);
    if (host.isSymbolicLink()) {
      if (!existing) await symlink(await readlink(`/${name}`), inJail);
    } else if (host.isDirectory()) {
      if (!existing) await mkdir(inJail);
      libDirs.push(`/${name}`);
    }
  }
  // Layers made by snapshots; QEMU may open them but not create anything here.
  await layersDir(spec.dir);
  const chains = spec.disks ?? INITIAL_CHAINS;
  for (const layer of [...chains.root, ...chains.data]) {
    await chown(join(spec.dir, layer), ids.uid, ids.gid);
    await chmod(join(spec.dir, layer), 0o600);
  }
  // Skill disks: a copy per VM owned by its uid (the cached image is root's alone and shared by
  // every VM), read-only to QEMU; the copies are replaced at every launch.
  const skillsDir = join(spec.dir, SKILL_COPIES_DIR);
  await rm(skillsDir, { recursive: true, force: true });
  if (spec.skills?.length) {
    await mkdir(skillsDir, { mode: 0o700 });
    for (const [i, s] of spec.skills.entries()) {
      const copy = skillCopyOf(spec.dir, i);
      await copyFile(s.path, copy);
      await chown(copy, ids.uid, ids.gid);
      await chmod(copy, 0o400);
      await writeFile(join(jail, jailPathOfSkill(i)), '', { flag: 'a', mode: 0o400 });
    }
  }
  if (spec.restore?.memory === 'mapped') {
    // QEMU 7.2 opens a memory file read-write even to map it privately; it never writes it.
    const memory = join(spec.restore.dir, SNAPSHOT_MEMORY_FILE);
    await chown(memory, ids.uid, ids.gid);
    await chmod(memory, 0o600);
  }
  return { libDirs };
}

/** Where a VM's copies of its skill disks live, in its directory (outside the jail). */
const SKILL_COPIES_DIR = 'skills';

function skillCopyOf(dir: string, index: number): string {
  return join(dir, SKILL_COPIES_DIR, `${index}.img`);
}

/**
 * The QEMU binary as an absolute path under /usr, the only host directory the jail shows.
 * A QEMU elsewhere (with its libraries) would not be reachable from inside.
 */
export async function resolveQemuBinary(binary: string): Promise<string> {
  let found: string | undefined;
  if (binary.includes('/')) found = binary;
  else {
    for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(delimiter)) {
      const candidate = join(dir, binary);
      if (
        await access(candidate, constants.X_OK).then(
          () => true,
          () => false,
        )
      ) {
        found = candidate;
        break;
      }
    }
  }
  const real = found ? await realpath(found).catch(() => undefined) : undefined;
  if (!real) throw new WarrenError('HOST_UNSUPPORTED', `cannot find ${binary}; install qemu-system-x86`);
  if (!real.startsWith('/usr/')) {
    throw new WarrenError(
      'HOST_UNSUPPORTED',
      `${binary} resolves to ${real}, outside /usr: a jailed QEMU sees only /usr of the host; install QEMU under /usr or point WARREN_QEMU there`,
    );
  }
  return real;
}

/**
 * RLIMIT_FSIZE for a VM: no file QEMU writes may grow past its largest disk (plus qcow2
 * metadata) or its memory (the memfd holding guest RAM is sized with ftruncate).
 */
export async function fileSizeLimit(spec: VmLaunchSpec): Promise<number> {
  // The data disk's bottom layer is data.img, or the volume a restore put in its place.
  const dataBase = join(spec.dir, (spec.disks ?? INITIAL_CHAINS).data[0]!);
  const sizes = await Promise.all([dataBase, spec.image.rootfsPath].map((p) => stat(p).then((s) => s.size)));
  return Math.max(...sizes, spec.memoryMiB * 1024 * 1024) + FSIZE_SLACK_BYTES;
}

/** POSIX shell quoting: the launcher never lets a path be read as shell syntax. */
function q(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

export interface LauncherOptions {
  binary: string;
  ids: JailIds;
  libDirs: string[];
  fsizeBytes: number;
  /** /dev/kvm's device number, when QEMU runs with KVM. */
  kvm?: { major: number; minor: number };
}

/** The launcher: a root shell that confines itself step by step and ends by exec'ing QEMU (see above). */
export function launcher(spec: VmLaunchSpec, qemuArgs: string[], o: LauncherOptions): Launcher {
  const jail = jailDirOf(spec.dir);
  const J = q(jail);
  const bindRo = (src: string, dst: string, flags = 'ro,nosuid,nodev,noexec') =>
    `mount -n --bind -o ${flags} ${q(src)} ${J}${q(dst)}`;
  const inner = [
    'set -e',
    `set -- ${qemuArgs.map(q).join(' ')}`,
    // Read through the host's /proc: the pid outside the new PID namespace, the one the agent signals.
    'read -r pid rest < /proc/self/stat',
    `echo "$pid" > ${q(join(spec.dir, QEMU_FILES.pid))}`,
    `mount -n --bind -o nosuid,nodev,noexec ${J} ${J}`,
    `mount -n -t tmpfs -o mode=0755,size=64k,nosuid,noexec tmpfs ${J}/dev`,
    `for d in /dev/null /dev/zero /dev/urandom; do : > ${J}"$d"; mount -n --bind "$d" ${J}"$d"; done`,
    ...(o.kvm
      ? [
          // A node of its own, owned by the VM's uid: no group of the host has to be granted.
          `mknod -m 0600 ${J}/dev/kvm c ${o.kvm.major} ${o.kvm.minor}`,
          `chown ${o.ids.uid}:${o.ids.gid} ${J}/dev/kvm`,
        ]
      : []),
    bindRo('/usr', '/usr', 'ro,nosuid,nodev'),
    ...o.libDirs.map((d) => bindRo(d, d, 'ro,nosuid,nodev')),
    bindRo(spec.image.kernelPath, JAIL_PATHS.kernel),
    bindRo(spec.image.initrdPath, JAIL_PATHS.initrd),
    bindRo(spec.image.rootfsPath, JAIL_PATHS.rootfs),
    bindRo(vmDisks(spec.dir).root, JAIL_PATHS.rootDisk, 'nosuid,nodev,noexec'),
    bindRo(vmDisks(spec.dir).data, JAIL_PATHS.dataDisk, 'nosuid,nodev,noexec'),
    ...(spec.skills ?? []).map((_, i) => bindRo(skillCopyOf(spec.dir, i), jailPathOfSkill(i))),
    ...(spec.restore?.memory === 'mapped'
      ? [
          bindRo(
            join(spec.restore.dir, SNAPSHOT_MEMORY_FILE),
            JAIL_PATHS.snapshotMemory,
            'nosuid,nodev,noexec',
          ),
        ]
      : []),
    `cd ${J}`,
    'pivot_root . .',
    // umount(8) needs /proc, which the jail has not; umount2(".", MNT_DETACH) drops the old root.
    `perl -e 'my $d = "."; syscall(166, $d, 2) == 0 or die "umount2: $!\\n"'`,
    'cd /',
    [
      'exec prlimit',
      `--nofile=${NOFILE}:${NOFILE}`,
      `--fsize=${o.fsizeBytes}:${o.fsizeBytes}`,
      '--core=0:0',
      '-- setpriv',
      `--reuid=${o.ids.uid} --regid=${o.ids.gid} --clear-groups`,
      '--inh-caps=-all --bounding-set=-all --no-new-privs',
      `-- ${q(o.binary)} "$@"`,
    ].join(' '),
  ].join('\n');
  // TUNSETIFF with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, what QEMU itself asks for; the fd stays
  // open in the shell (no close-on-exec) and so reaches QEMU.
  const openTap = spec.network
    ? [
        `exec ${TAP_FD}<>/dev/net/tun`,
        `perl -e 'open(my $t, "+<&=", ${TAP_FD}) or die "fd: $!\\n"; ioctl($t, 0x400454ca, pack("Z16 s x22", $ARGV[0], 0x5002)) or die "TUNSETIFF $ARGV[0]: $!\\n"' ${q(spec.network.tap)} || exit 126`,
      ]
    : [];
  const outer = [
    // The shell joins the VM's cgroups and then becomes the launcher, so everything after is limited.
    'for f in $WARREN_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done',
    ...openTap,
    // Not `unshare --fork`: it reports a QEMU killed by SIGKILL as "exited with 1". This shell,
    // outside the new PID namespace, waits for QEMU (PID 1 inside it) and ends as QEMU ended.
    `exec unshare --mount --pid --ipc --uts --net --propagation private -- /bin/sh -c '/bin/sh "$0"; s=$?; [ $s -gt 128 ] && kill -$((s - 128)) $$; exit $s' ${q(join(spec.dir, 'jail.sh'))}`,
  ].join('\n');
  return {
    scripts: { 'launch.sh': `${outer}\n`, 'jail.sh': `${inner}\n` },
    env: {
      PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
      WARREN_CGROUP_PROCS: spec.cgroup?.procsFiles.join(' ') ?? '',
      // Ties the process to this VM directory when a restarted agent re-attaches (jailed argv names no host path).
      WARREN_VM_DIR: spec.dir,
    },
  };
}
