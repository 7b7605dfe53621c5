import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '@warren/images';
import { PRIVATE_FILE_MODE } from '../fs-modes.ts';
import type { VmDiskSpec } from './driver.ts';

/**
 * The disk layout drivers backed by QEMU share (the QEMU driver and libvirt's): a qcow2 overlay
 * over the image's raw rootfs, and a raw ext4 data volume. A driver with other formats (a
 * Firecracker one would want raw roots) has its own.
 */
export function vmDisks(dir: string): { root: string; data: string } {
  return { root: join(dir, 'root.qcow2'), data: join(dir, 'data.img') };
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
