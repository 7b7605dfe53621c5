import { existsSync } from 'node:fs';
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WarrenError } from '@warren/protocol';

export interface ResourceLimits {
  /** CPU time per period as a number of whole CPUs (e.g. 2 = 200%). */
  cpus: number;
  memoryBytes: number;
  pidsMax: number;
}

/** A cgroup (v1: one per controller hierarchy) that holds one VM's QEMU. */
export interface CgroupHandle {
  readonly version: 'v1' | 'v2';
  /** Files a process writes its pid into to join; QEMU joins before it execs. */
  readonly procsFiles: string[];
  readonly paths: string[];
  remove(): Promise<void>;
}

export interface CgroupDriver {
  readonly version: 'v1' | 'v2';
  create(name: string, limits: ResourceLimits): Promise<CgroupHandle>;
  open(name: string): CgroupHandle;
}

const CPU_PERIOD_US = 100_000;
const PARENT = 'warren';

/**
 * cgroup v2 (unified hierarchy), what most production hosts run. The parent group
 * delegates cpu, memory and pids to its children.
 */
export class CgroupV2 implements CgroupDriver {
  readonly version = 'v2';
  readonly root: string;

  constructor(root = '/sys/fs/cgroup') {
    this.root = root;
  }

  async create(name: string, limits: ResourceLimits): Promise<CgroupHandle> {
    const parent = join(this.root, PARENT);
    await mkdir(parent, { recursive: true });
    await writeFile(join(this.root, 'cgroup.subtree_control'), '+cpu +memory +pids').catch(() => {});
    await writeFile(join(parent, 'cgroup.subtree_control'), '+cpu +memory +pids');
    const dir = join(parent, name);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'cpu.max'), `${Math.round(limits.cpus * CPU_PERIOD_US)} ${CPU_PERIOD_US}`);
    await writeFile(join(dir, 'memory.max'), String(limits.memoryBytes));
    await writeFile(join(dir, 'memory.swap.max'), '0').catch(() => {});
    await writeFile(join(dir, 'pids.max'), String(limits.pidsMax));
    return this.open(name);
  }

  open(name: string): CgroupHandle {
    const dir = join(this.root, PARENT, name);
    return {
      version: 'v2',
      procsFiles: [join(dir, 'cgroup.procs')],
      paths: [dir],
      remove: () => removeGroups([dir]),
    };
  }
}

/** cgroup v1: separate cpu, memory and pids hierarchies (the machines here). */
export class CgroupV1 implements CgroupDriver {
  readonly version = 'v1';
  readonly root: string;

  constructor(root = '/sys/fs/cgroup') {
    this.root = root;
  }

  async create(name: string, limits: ResourceLimits): Promise<CgroupHandle> {
    const handle = this.open(name);
    const [cpu, memory, pids] = handle.paths as [string, string, string];
    for (const dir of handle.paths) await mkdir(dir, { recursive: true });
    await writeFile(join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
    await writeFile(join(cpu, 'cpu.cfs_quota_us'), String(Math.round(limits.cpus * CPU_PERIOD_US)));
    await writeFile(join(memory, 'memory.limit_in_bytes'), String(limits.memoryBytes));
    await writeFile(join(memory, 'memory.memsw.limit_in_bytes'), String(limits.memoryBytes)).catch(() => {});
    await writeFile(join(pids, 'pids.max'), String(limits.pidsMax));
    return handle;
  }

  open(name: string): CgroupHandle {
    const paths = ['cpu', 'memory', 'pids'].map((c) => join(this.root, c, PARENT, name));
    return {
      version: 'v1',
      procsFiles: paths.map((p) => join(p, 'cgroup.procs')),
      paths,
      remove: () => removeGroups(paths),
    };
  }
}

/** A removed group must be empty; QEMU may take a moment to leave after it exits. */
async function removeGroups(dirs: string[]): Promise<void> {
  for (const dir of dirs) {
    for (let attempt = 0; ; attempt++) {
      try {
        await rmdir(dir);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        if (code === 'EBUSY' && attempt < 50) {
          await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        throw e;
      }
    }
  }
}

/** Picks the cgroup version this host runs; undefined when cgroups are off or unusable. */
export async function detectCgroups(
  setting: 'auto' | 'required' | 'off',
  root = '/sys/fs/cgroup',
): Promise<{ driver?: CgroupDriver; reason: string }> {
  if (setting === 'off') return { reason: 'disabled by configuration (WARREN_CGROUPS=off)' };
  let driver: CgroupDriver | undefined;
  if (existsSync(join(root, 'cgroup.controllers'))) driver = new CgroupV2(root);
  else if (existsSync(join(root, 'memory', 'memory.limit_in_bytes'))) driver = new CgroupV1(root);
  if (driver) {
    const probe = `probe-${process.pid}`;
    try {
      const h = await driver.create(probe, { cpus: 1, memoryBytes: 64 * 1024 * 1024, pidsMax: 16 });
      await h.remove();
      return { driver, reason: `cgroup ${driver.version} at ${root}` };
    } catch (e) {
      const reason = `cgroup ${driver.version} at ${root} is not writable: ${(e as Error).message}`;
      if (setting === 'required') throw new WarrenError('HOST_UNSUPPORTED', reason);
      return { reason };
    }
  }
  if (setting === 'required')
    throw new WarrenError('HOST_UNSUPPORTED', `no cgroup v1 or v2 hierarchy at ${root}`);
  return { reason: `no cgroup hierarchy at ${root}` };
}

/** The cgroup paths a process is in, from /proc (for tests and diagnostics). */
export async function cgroupsOf(pid: number): Promise<string> {
  return readFile(`/proc/${pid}/cgroup`, 'utf8');
}
