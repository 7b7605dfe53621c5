import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WarrenError } from '@warren/protocol';
import { run } from '../run.ts';

export interface KernelPackage {
  name: string;
  version: string;
}

export interface FetchedKernel {
  /** Root of the extracted package: boot/vmlinuz-*, lib/modules/<release>/. */
  root: string;
  vmlinuz: string;
  release: string;
}

/**
 * Finds the concrete kernel package behind a Debian metapackage such as
 * `linux-image-cloud-amd64`, and its candidate version. Both go into the recipe digest, so
 * a new kernel from the mirror makes a new image instead of silently changing an old one.
 */
export async function resolveKernelPackage(meta: string): Promise<KernelPackage> {
  let name = meta;
  const deps = await run('apt-cache', ['depends', meta]).catch(() => '');
  const m = /Depends:\s+(linux-image-\S+)/.exec(deps);
  if (m) name = m[1]!;
  const show = await run('apt-cache', ['show', '--no-all-versions', name]).catch(() => '');
  const version = /^Version:\s*(\S+)/m.exec(show)?.[1];
  if (!version) {
    throw new WarrenError(
      'IMAGE_BUILD_FAILED',
      `apt does not know the kernel package ${name}; run \`apt-get update\` (or set WARREN_KERNEL_PACKAGE)`,
    );
  }
  return { name, version };
}

/** Downloads and unpacks the kernel package once per version (without installing it on the host). */
export async function fetchKernel(
  cacheDir: string,
  pkg: KernelPackage,
  log: (line: string) => void,
): Promise<FetchedKernel> {
  const root = join(cacheDir, 'kernels', `${pkg.name}_${pkg.version}`);
  if (!existsSync(join(root, '.complete'))) {
    const work = `${root}.partial`;
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { recursive: true });
    log(`downloading ${pkg.name} ${pkg.version}`);
    // apt verifies the package against the signed release files of the mirror.
    await run('apt-get', ['download', '-q', `${pkg.name}=${pkg.version}`], { cwd: work, onLine: log });
    const deb = (await readdir(work)).find((f) => f.endsWith('.deb'));
    if (!deb)
      throw new WarrenError('IMAGE_BUILD_FAILED', `apt-get download produced no .deb for ${pkg.name}`);
    await run('dpkg-deb', ['-x', join(work, deb), join(work, 'x')]);
    await rm(join(work, deb));
    await rm(root, { recursive: true, force: true });
    await rename(join(work, 'x'), root);
    await rm(work, { recursive: true, force: true });
    const release = await kernelRelease(root);
    log(`indexing modules of ${release}`);
    await run('depmod', ['-b', root, release]);
    await writeFile(join(root, '.complete'), `${pkg.name}=${pkg.version}\n`);
  }
  const release = await kernelRelease(root);
  return { root, release, vmlinuz: join(root, 'boot', `vmlinuz-${release}`) };
}

async function kernelRelease(root: string): Promise<string> {
  const releases = await readdir(join(root, 'lib', 'modules'));
  if (releases.length !== 1) throw new WarrenError('IMAGE_BUILD_FAILED', `expected one kernel in ${root}`);
  return releases[0]!;
}
