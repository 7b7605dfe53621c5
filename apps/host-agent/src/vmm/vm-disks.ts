import { randomBytes } from 'node:crypto';
import { chmod, mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '@warren/images';
import { PRIVATE_FILE_MODE } from '../fs-modes.ts';
import { DISK_NAMES, type DiskChains, type DiskName, type VmDiskSpec } from './driver.ts';

/**
 * The disk layout drivers backed by QEMU share (the QEMU driver and libvirt's): a qcow2 overlay
 * over the image's raw rootfs, and a raw ext4 data volume. A driver with other formats (a
 * Firecracker one would want raw roots) has its own.
 */
export function vmDisks(dir: string): { root: string; data: string } {
  return { root: join(dir, 'root.qcow2'), data: join(dir, 'data.img') };
}

/** The chains of a VM that was never snapshotted: its two original disks. */
export const INITIAL_CHAINS: DiskChains = { root: ['root.qcow2'], data: ['data.img'] };

/**
 * Where snapshots put new top layers, relative to the VM directory. Inside the QEMU jail, so a
 * running QEMU can open a layer made after it started (jail.ts binds only files known at launch).
 */
export const LAYERS_DIR = 'jail/disks';

/**
 * Makes LAYERS_DIR: owned by root, traversable but not listable or writable by a VM's QEMU.
 * The mode is set, not asked of mkdir: the agent's umask (077) would leave QEMU out.
 */
export async function layersDir(dir: string): Promise<void> {
  const path = join(dir, LAYERS_DIR);
  await mkdir(path, { recursive: true });
  await chmod(path, 0o711);
}

/** The format of a layer file: the data volume's first layer is raw, every other one qcow2. */
export function layerFormat(layer: string): 'raw' | 'qcow2' {
  return layer.endsWith('.img') ? 'raw' : 'qcow2';
}

/** Creates both disks of a new VM in `dir`, root's alone. */
export async function createVmDisks(dir: string, spec: VmDiskSpec): Promise<void> {
  const disks = vmDisks(dir);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', spec.baseImage, disks.root], {
    errorCode: 'HOST_UNSUPPORTED',
  });
  // A sparse raw file with an ext4 filesystem; the agent user (uid 1000) owns its root.
  await run(
    'mkfs.ext4',
    ['-q', '-F', '-L', 'workspace', '-E', 'root_owner=1000:1000', disks.data, `${spec.dataMiB}M`],
    { errorCode: 'HOST_UNSUPPORTED' },
  );
  // Made by qemu-img and mkfs under whatever umask they apply: set, not assumed.
  for (const disk of [disks.root, disks.data]) await chmod(disk, PRIVATE_FILE_MODE);
}

/**
 * Makes an empty qcow2 top for each of `disks` (both by default) over the top of `frozen`, in
 * LAYERS_DIR, and returns the chains with them. `rootVirtualBytes` is the image rootfs's size
 * (the root disk's size).
 */
export async function createTops(
  dir: string,
  frozen: DiskChains,
  rootVirtualBytes: number,
  disks: readonly DiskName[] = DISK_NAMES,
): Promise<DiskChains> {
  await layersDir(dir);
  const out: DiskChains = { root: [...frozen.root], data: [...frozen.data] };
  const dataVirtualBytes = await virtualSize(dir, frozen.data[0]!);
  for (const [disk, size] of [
    ['root', rootVirtualBytes],
    ['data', dataVirtualBytes],
  ] as const) {
    if (!disks.includes(disk)) continue;
    const below = frozen[disk].at(-1)!;
    const top = `${LAYERS_DIR}/${disk}-${randomBytes(6).toString('hex')}.qcow2`;
    // The backing named in the header is informational (qemu-img info): QEMU is always given
    // the chain explicitly, and the jail's paths differ from the host's.
    await run(
      'qemu-img',
      [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-u',
        '-F',
        layerFormat(below),
        '-b',
        join(dir, below),
        join(dir, top),
        String(size),
      ],
      { errorCode: 'HOST_UNSUPPORTED' },
    );
    await chmod(join(dir, top), PRIVATE_FILE_MODE);
    out[disk].push(top);
  }
  return out;
}

/** The data volume's size: its first layer is the raw file mkfs made. */
async function virtualSize(dir: string, rawLayer: string): Promise<number> {
  return (await stat(join(dir, rawLayer))).size;
}
