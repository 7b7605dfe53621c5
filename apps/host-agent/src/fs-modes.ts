import { chmod, lstat, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Who may read what the agent keeps on disk: tenant disks (data.img, root.qcow2), consoles,
 * guest sockets, VM records and the agent's credentials. Nothing of it is for other local
 * users, so everything is root's alone; access for anyone else (a jailed QEMU's own uid) is
 * granted explicitly, per VM, on top of this — never through group or other bits.
 *
 * The umask is 0o077 rather than 0o027: 0o027 would still give the agent's group (root's
 * group, or whatever group an operator's service manager starts it with) read access to every
 * tenant's disk, and nothing the agent makes needs group access.
 */
export const AGENT_UMASK = 0o077;
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;
/** The bits a private file or directory must not have: everything for group and others. */
const SHARED_BITS = 0o077;

/**
 * The daemon's umask, for files made by it and by what it starts (qemu-img, mkfs, QEMU). Set by
 * the daemon only (main.ts), not by `openHost`. Image builds, whose files keep their modes in
 * the guest's root filesystem, run in a child process under 022 (images.ts).
 */
export function setAgentUmask(): void {
  process.umask(AGENT_UMASK);
}

/**
 * Takes group and other access off everything already under `dataDir`: files that an earlier
 * version, or a build run before the agent (`npm start` builds the image into the data directory
 * under the shell's umask 022), left readable. Files the agent makes get explicit modes.
 *
 * Only the data directory's own tree is changed. Symlinks are not followed (a link in there
 * must not make the agent chmod something outside). An images directory configured outside the
 * data directory (WARREN_IMAGES_DIR) is left alone: it may be shared or read-only, and holds
 * platform images, not tenant data. Paths for which `ownModes` is true are left alone with all
 * below them: a VM's jail, whose root must stay traversable for the VM's own QEMU uid (it is
 * reached only through the VM directory, which is root's alone, and its modes are set at every
 * launch).
 */
export async function lockDownDataDir(
  dataDir: string,
  ownModes: (path: string) => boolean = () => false,
): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: PRIVATE_DIR_MODE });
  await removeSharedBits(dataDir, ownModes);
}

async function removeSharedBits(path: string, ownModes: (path: string) => boolean): Promise<void> {
  if (ownModes(path)) return;
  let st: Awaited<ReturnType<typeof lstat>>;
  try {
    st = await lstat(path);
  } catch (e) {
    // Gone while walking (a VM destroyed meanwhile): nothing left to protect.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (st.isSymbolicLink()) return;
  if (st.mode & SHARED_BITS) {
    try {
      await chmod(path, st.mode & 0o7777 & ~SHARED_BITS);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
  }
  if (!st.isDirectory()) return;
  for (const name of await readdir(path).catch(() => [] as string[])) {
    await removeSharedBits(join(path, name), ownModes);
  }
}
