import { existsSync, readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WarrenError } from '@warren/protocol';
import { canonicalJson, sha256 } from './digest.ts';
import type { ImageManifest, Profile } from './manifest.ts';
import { run } from './run.ts';
import { bundleGuestAgent, guestNode, makeAgentCodeCache } from './steps/guest-agent.ts';
import { buildInitramfs, INIT, INIT_APPLETS } from './steps/initramfs.ts';
import { fetchKernel, resolveKernelPackage } from './steps/kernel.ts';
import { checkOpenClawNode, installOpenClaw, openclawRecipe } from './steps/openclaw.ts';
import {
  buildMinimalTree,
  buildStandardTree,
  hostDebianMirror,
  makeExt4,
  runtimeScripts,
  STANDARD_PACKAGES,
} from './steps/rootfs.ts';
import type { ImageStore } from './store.ts';

/**
 * Bump when the builder's output changes for the same inputs (new layout; the boot scripts
 * are in the recipe themselves): old cache entries then stop matching and images are rebuilt.
 */
export const RECIPE_VERSION = 3;

export interface BuildOptions {
  profile: Profile;
  /** Debian kernel package or metapackage. */
  kernelPackage?: string;
  /** Rebuild even when the recipe is cached. */
  force?: boolean;
  /** Directory for downloads kept between builds. */
  cacheDir: string;
  debianSuite?: string;
  debianMirror?: string;
  busyboxPath?: string;
  onProgress?: (event: BuildProgress) => void;
}

export interface BuildProgress {
  step: number;
  steps: number;
  title: string;
  /** A line of a long-running tool's output, if any. */
  detail?: string;
}

export interface BuildResult {
  imageId: string;
  cached: boolean;
  manifest?: ImageManifest;
  recipeDigest: string;
}

/**
 * `cryptomgr.notests`: the kernel's self-tests of its crypto algorithms took ~0.25 s of every
 * boot under TCG (bench/boot-trace.ts); they check the kernel's own code, the same in every boot
 * of an image, and are still run in FIPS mode, which ignores this.
 */
const KERNEL_CMDLINE =
  'root=/dev/vda rw panic=-1 reboot=t i8042.noaux i8042.nomux i8042.nopnp cryptomgr.notests quiet loglevel=4';

/** Umask bits that take read access from group or others. */
const UNREADABLE_BITS = 0o044;

/**
 * This process's umask, read without changing it. `process.umask()` reads it by setting it to 0
 * and back, a window in which libuv's threads may create files with any mode (hence Node's
 * deprecation DEP0139); Linux shows it in /proc/self/status (since 4.7), and only older kernels
 * fall back to that.
 */
export function currentUmask(): number {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number.parseInt(m[1]!, 8);
  } catch {
    // No /proc: fall through.
  }
  return process.umask();
}

/**
 * Refuses to build under a umask that takes read access from group or others: the files the
 * build and its tools (debootstrap, dpkg, mkfs.ext4 -d) create keep their modes in the guest,
 * whose unprivileged user could then not even run /bin/sh.
 */
function checkUmask(): void {
  const umask = currentUmask();
  if (umask & UNREADABLE_BITS) {
    const octal = umask.toString(8).padStart(4, '0');
    throw new WarrenError(
      'IMAGE_BUILD_FAILED',
      `refusing to build an image under umask ${octal}: the guest's files would keep the modes it gives (e.g. /usr readable by root only) and its agent user could not run them; build under umask 0022 (\`umask 022\`, or through the host agent, which builds in a process of its own under 0022)`,
    );
  }
}

export async function buildImage(store: ImageStore, options: BuildOptions): Promise<BuildResult> {
  checkUmask();
  const steps = 6;
  const progress = (step: number, title: string, detail?: string) =>
    options.onProgress?.({ step, steps, title, ...(detail === undefined ? {} : { detail }) });
  const busybox = options.busyboxPath ?? '/bin/busybox';
  if (!existsSync(busybox)) {
    throw new WarrenError('IMAGE_BUILD_FAILED', `${busybox} is missing; install the busybox-static package`);
  }

  progress(1, 'resolving recipe inputs');
  const kernelPkg = await resolveKernelPackage(options.kernelPackage ?? 'linux-image-cloud-amd64');
  const agent = await bundleGuestAgent();
  const node = await guestNode();
  if (options.profile === 'openclaw') checkOpenClawNode(node.version);
  const busyboxVersion = (await run(busybox, ['--help']).catch(() => '')).split('\n')[0] ?? '';
  const suite = options.debianSuite ?? 'bookworm';
  const recipe = {
    recipeVersion: RECIPE_VERSION,
    profile: options.profile,
    kernel: kernelPkg,
    busybox: busyboxVersion,
    node: node.version,
    guestAgent: agent.digest,
    // The boot scripts: two branches that changed only these must not share a cached image.
    scripts: sha256([INIT, ...INIT_APPLETS, runtimeScripts()].join('\0')),
    cmdline: KERNEL_CMDLINE,
    ...(options.profile === 'minimal' ? {} : { debian: { suite, packages: STANDARD_PACKAGES } }),
    ...(options.profile === 'openclaw' ? { openclaw: await openclawRecipe() } : {}),
  };
  const recipeDigest = sha256(canonicalJson(recipe));
  if (!options.force) {
    const cached = await store.lookupRecipe(recipeDigest);
    if (cached) return { imageId: cached, cached: true, recipeDigest };
  }

  const work = await store.tempDir(`build-${options.profile}`);
  try {
    progress(2, `fetching kernel ${kernelPkg.name} ${kernelPkg.version}`);
    const kernel = await fetchKernel(options.cacheDir, kernelPkg, (l) => progress(2, 'fetching kernel', l));

    progress(3, 'building initramfs');
    const initrdFile = join(work, 'initrd.img');
    await buildInitramfs(kernel, busybox, work, initrdFile);

    progress(4, `building ${options.profile} root filesystem tree`);
    const tree = join(work, 'rootfs');
    const agentFile = join(work, 'guest-agent.js');
    await writeFile(agentFile, agent.code);
    const runtime = { busybox, node: node.path, agentBundle: agentFile, agentVersion: agent.version };
    if (options.profile === 'minimal') {
      await buildMinimalTree(tree, runtime);
    } else {
      const mirror = options.debianMirror ?? (await hostDebianMirror());
      if (!mirror) {
        throw new WarrenError('IMAGE_BUILD_FAILED', 'no Debian mirror configured; set WARREN_DEBIAN_MIRROR');
      }
      await buildStandardTree(tree, runtime, {
        suite,
        mirror,
        cacheDir: join(options.cacheDir, 'debootstrap'),
        log: (l) => progress(4, 'debootstrap', l),
      });
      if (options.profile === 'openclaw') {
        await installOpenClaw(tree, {
          node: node.path,
          work,
          cacheDir: options.cacheDir,
          log: (l) => progress(4, 'installing OpenClaw', l),
        });
      }
    }

    // The agent's V8 code cache, so a booting guest does not compile it (steps/guest-agent.ts).
    await makeAgentCodeCache(join(tree, 'usr', 'lib', 'warren'), busybox);

    progress(5, 'making ext4 root filesystem');
    const rootfsFile = join(work, 'rootfs.ext4');
    await makeExt4(tree, rootfsFile, options.profile === 'minimal' ? 64 : 512);

    progress(6, 'storing content-addressed artifacts');
    const kernelCopy = join(work, 'vmlinuz');
    await run('cp', [kernel.vmlinuz, kernelCopy]);
    const kernelBlob = await store.putBlob(kernelCopy);
    const initrdBlob = await store.putBlob(initrdFile);
    const rootfsBlob = await store.putBlob(rootfsFile);
    const manifest: ImageManifest = {
      schemaVersion: 1,
      profile: options.profile,
      recipe: { version: RECIPE_VERSION, digest: recipeDigest },
      kernel: { ...kernelBlob, release: kernel.release, package: `${kernelPkg.name}=${kernelPkg.version}` },
      initrd: initrdBlob,
      rootfs: { ...rootfsBlob, format: 'ext4' },
      guestAgent: { version: agent.version, digest: agent.digest },
      node: { version: node.version },
      cmdline: KERNEL_CMDLINE,
    };
    const imageId = await store.putManifest(manifest);
    await store.recordRecipe(recipeDigest, imageId);
    return { imageId, cached: false, manifest, recipeDigest };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
