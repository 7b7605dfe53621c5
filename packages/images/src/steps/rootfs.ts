import { chmod, chown, copyFile, mkdir, readFile, realpath, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { run } from '../run.ts';
import { AGENT_FILES, AGENT_LOADER } from './guest-agent.ts';

/** The unprivileged account agents work as; uid 1000 in every profile. */
export const AGENT_USER = { name: 'agent', uid: 1000, gid: 1000, home: '/home/agent' };

export interface RuntimeFiles {
  busybox: string;
  node: string;
  agentBundle: string;
  agentVersion: string;
}

const INITTAB = `::sysinit:/usr/lib/warren/rc.sysinit
::respawn:/usr/lib/warren/guest-agent
::ctrlaltdel:/usr/lib/warren/busybox poweroff
::shutdown:/usr/lib/warren/rc.shutdown
`;

const SYSINIT = `#!/usr/lib/warren/busybox sh
# Runs once at boot, before the guest agent starts.
B=/usr/lib/warren/busybox
$B mkdir -p /dev/pts /dev/shm /run /tmp /workspace
$B mount -t devpts -o gid=5,mode=620 devpts /dev/pts
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
$B mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
$B mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
[ -e /dev/fd ] || $B ln -s /proc/self/fd /dev/fd
$B ip link set lo up 2>/dev/null
net=
template=
for arg in $($B cat /proc/cmdline); do
  case "$arg" in
    warren.hostname=*) $B hostname "\${arg#warren.hostname=}" ;;
    warren.net=*) net="\${arg#warren.net=}" ;;
    warren.template=1) template=1 ;;
  esac
done
# Template mode (the host snapshots this boot for tenants to start from): no network and no
# data volume; the guest agent sets both up when the host gives a restored copy its identity.
if [ -n "$template" ]; then net=; echo "warren: template boot"; fi
# The host agent passes this VM's link as warren.net=<address>/<prefix>,<gateway>,<dns>.
if [ -n "$net" ]; then
  addr="\${net%%,*}"; rest="\${net#*,}"; gw="\${rest%%,*}"; dns="\${rest#*,}"
  dev=
  i=0
  while [ -z "$dev" ] && [ $i -lt 200 ]; do
    for d in /sys/class/net/*; do [ "\${d##*/}" = lo ] || dev="\${d##*/}"; done
    [ -n "$dev" ] || { $B usleep 10000; i=$((i + 1)); }
  done
  if [ -n "$dev" ] && $B ip link set "$dev" up && $B ip addr add "$addr" dev "$dev" &&
    $B ip route add default via "$gw" dev "$dev"; then
    echo "nameserver $dns" > /etc/resolv.conf
  else
    echo "warren: cannot configure the network ($net) on \${dev:-no interface}"
  fi
fi
# The data volume is the tenant's persistent disk; the root disk is a per-VM overlay.
if [ -z "$template" ] && [ -b /dev/vdb ]; then
  $B mount -t ext4 -o noatime,nosuid,nodev /dev/vdb /workspace || echo "warren: cannot mount the data volume /dev/vdb"
fi
read -r up _ < /proc/uptime; echo "warren-boot: sysinit-done $up"
`;

const SHUTDOWN = `#!/usr/lib/warren/busybox sh
B=/usr/lib/warren/busybox
$B sync
$B umount /workspace 2>/dev/null
$B mount -o remount,ro / 2>/dev/null
$B sync
`;

function agentLauncher(version: string): string {
  return `#!/usr/lib/warren/busybox sh
# The agent's reads of the control port block a libuv worker; give file I/O more workers.
export UV_THREADPOOL_SIZE=8
export WARREN_AGENT_VERSION=${version}
export NODE_OPTIONS=
read -r up _ < /proc/uptime; echo "warren-boot: agent-launch $up"
exec /usr/lib/warren/node /usr/lib/warren/${AGENT_FILES.loader}
`;
}

/** The scripts every guest runs at boot, for the image recipe: changing one makes a new image. */
export function runtimeScripts(): string {
  return [INITTAB, SYSINIT, SHUTDOWN, agentLauncher('VERSION'), AGENT_LOADER].join('\0');
}

/** Installs what every Warren guest has: busybox init, Node.js, the guest agent, the agent user. */
export async function installRuntime(dir: string, files: RuntimeFiles): Promise<void> {
  const lib = join(dir, 'usr', 'lib', 'warren');
  await mkdir(lib, { recursive: true });
  await copyFile(files.busybox, join(lib, 'busybox'));
  await chmod(join(lib, 'busybox'), 0o755);
  await copyFile(files.node, join(lib, 'node'));
  await chmod(join(lib, 'node'), 0o755);
  await copyFile(files.agentBundle, join(lib, AGENT_FILES.bundle));
  await writeFile(join(lib, AGENT_FILES.loader), AGENT_LOADER);
  await writeFile(join(lib, 'guest-agent'), agentLauncher(files.agentVersion), { mode: 0o755 });
  await writeFile(join(lib, 'rc.sysinit'), SYSINIT, { mode: 0o755 });
  await writeFile(join(lib, 'rc.shutdown'), SHUTDOWN, { mode: 0o755 });
  await mkdir(join(dir, 'etc'), { recursive: true });
  await writeFile(join(dir, 'etc', 'inittab'), INITTAB);
  await mkdir(join(dir, 'usr', 'local', 'bin'), { recursive: true });
  await symlink('/usr/lib/warren/node', join(dir, 'usr', 'local', 'bin', 'node')).catch(() => {});
  for (const d of ['dev', 'proc', 'sys', 'run', 'tmp', 'workspace', 'root']) {
    await mkdir(join(dir, d), { recursive: true });
  }
  await chmod(join(dir, 'tmp'), 0o1777);
}

/**
 * The minimal profile: busybox applets, Node.js with the host's copies of the shared
 * libraries it links against, and nothing else. Quick to build; meant for tests.
 */
export async function buildMinimalTree(dir: string, files: RuntimeFiles): Promise<void> {
  await installRuntime(dir, files);
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'home', 'var/tmp']) {
    await mkdir(join(dir, d), { recursive: true });
  }
  const applets = (await run(files.busybox, ['--list-full'])).split('\n').filter(Boolean);
  for (const applet of applets) {
    if (applet === 'sbin/init' || applet === 'linuxrc') continue;
    await symlink('/usr/lib/warren/busybox', join(dir, applet)).catch(() => {});
  }
  for (const libPath of await sharedLibraries(files.node)) {
    const target = join(dir, libPath);
    await mkdir(dirname(target), { recursive: true });
    await copyFile(await realpath(libPath), target);
  }
  const { name, uid, gid, home } = AGENT_USER;
  await writeFile(
    join(dir, 'etc', 'passwd'),
    `root:x:0:0:root:/root:/bin/sh\n${name}:x:${uid}:${gid}:agent:${home}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n`,
  );
  await writeFile(join(dir, 'etc', 'group'), `root:x:0:\ntty:x:5:\n${name}:x:${gid}:\nnogroup:x:65534:\n`);
  await writeFile(join(dir, 'etc', 'shadow'), `root:*:1::::::\n${name}:*:1::::::\n`, { mode: 0o600 });
  await writeFile(join(dir, 'etc', 'hosts'), '127.0.0.1 localhost\n::1 localhost\n');
  await writeFile(join(dir, 'etc', 'resolv.conf'), '');
  await mkdir(join(dir, home), { recursive: true });
  await chown(join(dir, home), uid, gid);
}

/** Absolute paths of the shared libraries (and loader) a dynamic executable needs. */
async function sharedLibraries(executable: string): Promise<string[]> {
  const out = await run('ldd', [executable]);
  const paths = new Set<string>();
  for (const line of out.split('\n')) {
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (m) paths.add(m[1]!);
  }
  return [...paths];
}

export const STANDARD_PACKAGES = [
  'bash',
  'coreutils',
  'python3',
  'git',
  'curl',
  'ca-certificates',
  'sudo',
  'procps',
  'iproute2',
  'less',
  'xz-utils',
];

/** Reads the Debian mirror the host's apt uses, so guests come from the same place. */
export async function hostDebianMirror(): Promise<string | undefined> {
  for (const file of ['/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list']) {
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    const deb822 = /^URIs:\s*(\S+)/m.exec(text);
    if (deb822) return deb822[1];
    const legacy = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+/m.exec(text);
    if (legacy) return legacy[1];
  }
  return undefined;
}

/**
 * The standard profile: Debian from debootstrap with the tools coding agents expect,
 * plus the Warren runtime. The package cache is kept between builds.
 */
export async function buildStandardTree(
  dir: string,
  files: RuntimeFiles,
  options: { suite: string; mirror: string; cacheDir: string; log: (line: string) => void },
): Promise<void> {
  await mkdir(options.cacheDir, { recursive: true });
  await run(
    'debootstrap',
    [
      '--variant=minbase',
      `--include=${STANDARD_PACKAGES.join(',')}`,
      `--cache-dir=${options.cacheDir}`,
      options.suite,
      dir,
      options.mirror,
    ],
    { onLine: options.log },
  );
  const { name, uid } = AGENT_USER;
  await run('chroot', [
    dir,
    'useradd',
    '--create-home',
    '--uid',
    String(uid),
    '--user-group',
    '--shell',
    '/bin/bash',
    name,
  ]);
  await writeFile(join(dir, 'etc', 'sudoers.d', 'warren-agent'), `${name} ALL=(ALL) NOPASSWD: ALL\n`, {
    mode: 0o440,
  });
  await writeFile(join(dir, 'etc', 'resolv.conf'), '');
  await run('chroot', [dir, 'apt-get', 'clean']);
  await run('bash', ['-c', 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/log/*.log', 'bash', dir]);
  await installRuntime(dir, files);
}

/** Makes an ext4 image of `dir` with some free space, without mounting anything. */
export async function makeExt4(dir: string, out: string, headroomMiB: number): Promise<void> {
  const used = Number((await run('du', ['-s', '--block-size=1M', dir])).split(/\s/)[0]);
  const sizeMiB = Math.ceil((used * 1.15 + headroomMiB) / 16) * 16;
  await run('mkfs.ext4', ['-q', '-F', '-L', 'warren-root', '-d', dir, out, `${sizeMiB}M`]);
}
