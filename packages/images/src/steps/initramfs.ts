import { chmod, copyFile, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { WarrenError } from '@warren/protocol';
import { run } from '../run.ts';
import type { FetchedKernel } from './kernel.ts';

/**
 * Modules the guest needs before its root filesystem is mounted. Debian's cloud kernel
 * builds virtio as modules and microvm finds virtio-mmio devices through ACPI, so the
 * initramfs loads these (and what they depend on) in order. vsock is loaded for hosts
 * and VMMs that use it as the control channel.
 */
export const BOOT_MODULES = [
  'virtio_mmio',
  'virtio_blk',
  'virtio_console',
  'virtio_net',
  'virtio-rng',
  'vmw_vsock_virtio_transport',
];

/** Module files in load order: dependencies first, each once. */
export async function moduleClosure(kernel: FetchedKernel, names: string[]): Promise<string[]> {
  const depFile = join(kernel.root, 'lib', 'modules', kernel.release, 'modules.dep');
  const deps = new Map<string, string[]>();
  for (const line of (await readFile(depFile, 'utf8')).split('\n')) {
    const [mod, rest] = line.split(':');
    if (mod) deps.set(mod, (rest ?? '').trim().split(/\s+/).filter(Boolean));
  }
  const byName = new Map<string, string>();
  for (const path of deps.keys()) {
    byName.set(path.slice(path.lastIndexOf('/') + 1).replace(/\.ko(\.\w+)?$/, ''), path);
  }
  const order: string[] = [];
  const visit = (path: string) => {
    if (order.includes(path)) return;
    for (const dep of deps.get(path) ?? []) visit(dep);
    order.push(path);
  };
  for (const name of names) {
    const path = byName.get(name) ?? byName.get(name.replace(/-/g, '_'));
    if (!path) throw new WarrenError('IMAGE_BUILD_FAILED', `kernel ${kernel.release} has no module ${name}`);
    visit(path);
  }
  return order;
}

export const INIT = `#!/bin/busybox sh
# Warren initramfs: load the virtio modules, mount the root disk, hand over to its init.
# The applets it runs are linked in /bin at build time (INIT_APPLETS): \`busybox --install\`
# here took ~0.1 s of every boot under TCG.
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# Boot milestones go to the console with the guest's uptime (bench/boot-trace.ts reads them).
read -r up _ < /proc/uptime; echo "warren-boot: initramfs $up"
for m in $(cat /etc/warren-modules); do
  insmod "/lib/modules/$m" || echo "warren-initramfs: cannot load $m"
done
read -r up _ < /proc/uptime; echo "warren-boot: modules $up"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do usleep 10000; i=$((i + 1)); done
mkdir -p /newroot
if ! mount -t ext4 -o rw,noatime /dev/vda /newroot; then
  echo "warren-initramfs: cannot mount the root disk /dev/vda"
  poweroff -f
fi
read -r up _ < /proc/uptime; echo "warren-boot: root-mounted $up"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /usr/lib/warren/busybox init
`;

/** The busybox applets INIT runs, linked in the initramfs's /bin. */
export const INIT_APPLETS = ['sh', 'mount', 'cat', 'insmod', 'usleep', 'mkdir', 'poweroff', 'switch_root'];

export async function buildInitramfs(kernel: FetchedKernel, busybox: string, work: string, out: string) {
  const dir = join(work, 'initramfs');
  for (const d of ['bin', 'dev', 'proc', 'sys', 'etc', 'newroot'])
    await mkdir(join(dir, d), { recursive: true });
  await copyFile(busybox, join(dir, 'bin', 'busybox'));
  await chmod(join(dir, 'bin', 'busybox'), 0o755);
  for (const applet of INIT_APPLETS) await symlink('busybox', join(dir, 'bin', applet));
  const modules = await moduleClosure(kernel, BOOT_MODULES);
  for (const rel of modules) {
    const target = join(dir, 'lib', 'modules', rel);
    await mkdir(dirname(target), { recursive: true });
    await copyFile(join(kernel.root, 'lib', 'modules', kernel.release, rel), target);
  }
  await writeFile(join(dir, 'etc', 'warren-modules'), `${modules.join('\n')}\n`);
  await writeFile(join(dir, 'init'), INIT, { mode: 0o755 });
  // Sorted names and no timestamps in gzip keep the archive stable for the same inputs.
  await run('bash', [
    '-o',
    'pipefail',
    '-c',
    'cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null --create --format=newc --reproducible --quiet | gzip -n -6 > "$2"',
    'bash',
    dir,
    out,
  ]);
  return { modules };
}
