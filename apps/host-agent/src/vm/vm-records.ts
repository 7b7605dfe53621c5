import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  BackupId,
  DesiredSkill,
  NetworkPolicy,
  parseOrThrow,
  SnapshotMemory,
  SnapshotName,
  WarrenError,
} from '@warren/protocol';
import { z } from 'zod';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../fs-modes.ts';

export const VmId = z
  .string()
  .regex(
    /^[a-z0-9][a-z0-9-]{0,39}$/,
    'a VM id is 1-40 lowercase letters, digits and dashes, starting alphanumeric',
  );

/** A VM's disk layers, relative to its directory (vmm/driver.ts DiskChains). */
const Chains = z.object({ root: z.array(z.string()).min(1), data: z.array(z.string()).min(1) });

export const SnapshotRecord = z.object({
  name: SnapshotName,
  createdAt: z.string(),
  parent: SnapshotName.nullable(),
  memory: SnapshotMemory,
  pausedMs: z.number(),
  /** Its memory and device state, relative to the VM directory. */
  dir: z.string(),
  /** The disk layers it froze: a revert puts new tops over them. */
  disks: Chains,
  /**
   * The skill packages attached when it was taken: its device state has exactly those disks, so
   * a revert attaches them again (absent in snapshots from before skills: none).
   */
  skills: z.array(DesiredSkill).optional(),
});
export type SnapshotRecord = z.infer<typeof SnapshotRecord>;

/**
 * The last backup this host completed of a VM, and the chains it froze (relative paths; `root`
 * only when the backup held the root disk). Layers below a VM's top never change, so while the
 * mark's chain is a prefix of a later backup's, only the clusters of the layers above it can
 * differ from that backup: the next one reads only those.
 */
export const BackupMark = z.object({
  id: BackupId,
  chains: z.object({ data: z.array(z.string()).min(1), root: z.array(z.string()).min(1).optional() }),
});
export type BackupMark = z.infer<typeof BackupMark>;

export const VmRecord = z.object({
  id: VmId,
  imageId: z.string(),
  cpus: z.number().int(),
  memoryMiB: z.number().int(),
  diskMiB: z.number().int(),
  createdAt: z.string(),
  /**
   * The VMM driver that made the VM and owns its files and process; records from before
   * drivers were chosen are QEMU's. Another driver never launches or re-attaches it.
   */
  vmm: z.string().default('qemu'),
  /** What the VM should be doing; an exit while `running` is a crash. */
  desired: z.enum(['running', 'stopped']),
  lastExit: z
    .object({
      reason: z.string(),
      graceful: z.boolean(),
      code: z.number().nullable(),
      signal: z.string().nullable(),
      at: z.string(),
    })
    .optional(),
  /** The VM's link, allocated once at create and kept for its life, so restarts give the same addresses. */
  network: z
    .object({
      index: z.number().int().nonnegative(),
      tap: z.string(),
      mac: z.string(),
      hostIp: z.string(),
      guestIp: z.string(),
    })
    .optional(),
  /** The uid and gid its VMM runs as, its own on this host; held as long as this record exists. */
  jail: z.object({ uid: z.number().int().positive(), gid: z.number().int().positive() }).optional(),
  /** What the firewall lets the VM reach; kept here so an agent restart renders the same rules before any heartbeat. */
  networkPolicy: NetworkPolicy.optional(),
  /** Its disk layers once it has been snapshotted; the two original disks until then. */
  disks: Chains.optional(),
  snapshots: z.array(SnapshotRecord).default([]),
  /** The snapshot the VM was last made from or reverted to, parent of the next one. */
  basedOn: SnapshotName.optional(),
  backupMark: BackupMark.optional(),
  /**
   * Set when no control plane listed this tenant VM (an orphan): it is kept stopped until
   * `removeAfter`, then destroyed, unless the desired list names it again first (adopted).
   */
  quarantine: z.object({ at: z.string(), removeAfter: z.string() }).optional(),
  /**
   * Set while the VM is suspended (idle reclamation): its memory and device state in `dir`
   * (relative to the VM directory), saved at `at`; its disks are the chains above, unchanged.
   */
  suspended: z.object({ dir: z.string(), memory: SnapshotMemory, at: z.string() }).optional(),
  /** Set at create until the VM's first start, which may restore its image's template instead of booting (templates.ts). */
  neverStarted: z.literal(true).optional(),
  /** Skill packages to attach at the VM's next boot, as the control plane resolved them. */
  skills: z.array(DesiredSkill).default([]),
  /**
   * The packages attached to its current (or last) boot: a wake or a revert restores device
   * state that has exactly these disks, so it attaches these, not `skills`.
   */
  attachedSkills: z.array(DesiredSkill).optional(),
});
export type VmRecord = z.infer<typeof VmRecord>;

/** VmId cannot start with a dot, so these never show up as VMs. */
const PARTIAL_PREFIX = '.partial-';
const RECORD = 'vm.json';

/**
 * The VMs of this host on disk: each lives in `<dataDir>/vms/<id>/`, described by its vm.json.
 * A VM directory appears only complete (built aside, then renamed), and a record is replaced
 * atomically, so a crash at any point leaves either the old state or the new one.
 */
export class VmRecords {
  readonly dir: string;
  readonly #log: (message: string) => void;

  constructor(dataDir: string, log: (message: string) => void = () => {}) {
    this.dir = join(dataDir, 'vms');
    this.#log = log;
  }

  dirOf(id: string): string {
    return join(this.dir, parseOrThrow(VmId, id));
  }

  async exists(id: string): Promise<boolean> {
    return exists(this.dirOf(id));
  }

  async read(id: string): Promise<VmRecord> {
    let text: string;
    try {
      text = await readFile(join(this.dirOf(id), RECORD), 'utf8');
    } catch {
      throw new WarrenError('VM_NOT_FOUND', `no VM ${id} on this host`);
    }
    return VmRecord.parse(JSON.parse(text));
  }

  /** The record, or undefined when it is missing or unreadable. */
  tryRead(id: string): Promise<VmRecord | undefined> {
    return this.read(id).catch(() => undefined);
  }

  async write(record: VmRecord, dir = this.dirOf(record.id)): Promise<void> {
    const path = join(dir, RECORD);
    const tmp = `${path}.tmp`;
    try {
      await writeFile(tmp, JSON.stringify(record, null, 2), { mode: PRIVATE_FILE_MODE });
      await rename(tmp, path);
    } catch (e) {
      // A write cut short (a full disk) must not leave its half behind.
      await rm(tmp, { force: true }).catch(() => {});
      throw e;
    }
  }

  /** The ids of the VM directories, readable record or not, sorted. */
  async ids(): Promise<string[]> {
    const names = await readdir(this.dir).catch(() => []);
    return names.filter((n) => VmId.safeParse(n).success).sort();
  }

  /** Every readable record. */
  async all(): Promise<VmRecord[]> {
    const out: VmRecord[] = [];
    for (const id of await this.ids()) {
      const record = await this.tryRead(id);
      if (record) out.push(record);
    }
    return out;
  }

  /**
   * Builds a VM in `.partial-<id>`: `build` fills it and calls `commit(record)`, which writes the
   * record and renames the directory into place. Until then a crash (even kill -9) leaves no
   * half-made VM: the next `removeDebris` removes the partial directory. A failed build is removed.
   */
  async create<T>(
    id: string,
    build: (dir: string, commit: (record: VmRecord) => Promise<void>) => Promise<T>,
  ): Promise<T> {
    const dir = this.dirOf(id);
    if (await exists(dir)) throw new WarrenError('CONFLICT', `VM ${id} already exists`);
    const partial = join(this.dir, `${PARTIAL_PREFIX}${id}`);
    // Left over only if this process lost a create mid-way without reaching the cleanup below.
    await rm(partial, { recursive: true, force: true });
    await mkdir(partial, { mode: PRIVATE_DIR_MODE });
    try {
      return await build(partial, async (record) => {
        await this.write(record, partial);
        await rename(partial, dir);
      });
    } catch (e) {
      await rm(partial, { recursive: true, force: true });
      throw e;
    }
  }

  /** Removes a VM's directory and with it every file it had. */
  async remove(id: string): Promise<void> {
    await rm(this.dirOf(id), { recursive: true, force: true });
  }

  /**
   * Makes the VMs directory, and removes what a crash mid-create left: `.partial-*` dirs, and VM
   * dirs without vm.json (made by agents that wrote vm.json last, in place; `onIncomplete` is
   * called for each before it goes). Dirs with a vm.json that fails to parse are kept: they may
   * hold a tenant's data, and a person should look at them.
   */
  async open(onIncomplete: (id: string) => Promise<void>): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: PRIVATE_DIR_MODE });
    for (const name of await readdir(this.dir)) {
      const path = join(this.dir, name);
      if (name.startsWith(PARTIAL_PREFIX)) {
        this.#log(`removing ${path}: a VM create that never finished`);
        await rm(path, { recursive: true, force: true });
      } else if (VmId.safeParse(name).success && !(await exists(join(path, RECORD)))) {
        this.#log(`removing ${path}: a VM directory without vm.json (an interrupted create)`);
        await onIncomplete(name);
        await rm(path, { recursive: true, force: true });
      }
    }
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
}
