import { existsSync } from 'node:fs';
import { mkdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type CgroupState, WarrenError } from '@warren/protocol';

export interface ResourceLimits {
  /** CPU time per period as a number of whole CPUs (e.g. 2 = 200%). */
  cpus: number;
  memoryBytes: number;
  pidsMax: number;
  /** Disk bandwidth and operations per second, each direction, on the device holding the VMs' disks. */
  io?: IoLimit;
}

export interface IoLimit {
  /** `major:minor` of a whole disk (see blockDeviceOf). */
  device: string;
  bytesPerSecond: number;
  opsPerSecond: number;
}

/** A cgroup (v1: one per controller hierarchy) that holds one VM's QEMU. */
export interface CgroupHandle {
  readonly version: 'v1' | 'v2';
  /** Files a process writes its pid into to join; QEMU joins before it execs. */
  readonly procsFiles: string[];
  readonly paths: string[];
  remove(): Promise<void>;
  /** CPU time used and memory held by the group now (metrics); undefined where not readable. */
  usage(): Promise<CgroupUsage>;
}

export interface CgroupUsage {
  cpuSeconds?: number;
  memoryBytes?: number;
}

/** A number from a cgroup file (whole file, or the value of `key` in a `key value` file). */
async function readNumber(path: string, key?: string): Promise<number | undefined> {
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const value = key ? new RegExp(`^${key} (\\d+)$`, 'm').exec(text)?.[1] : text.trim();
  const n = Number(value);
  return value !== undefined && Number.isFinite(n) ? n : undefined;
}

export interface CgroupDriver {
  readonly version: 'v1' | 'v2';
  /** Where the hierarchy is mounted. */
  readonly root: string;
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
    if (limits.io) {
      await writeFile(join(this.root, 'cgroup.subtree_control'), '+io').catch(() => {});
      await writeFile(join(parent, 'cgroup.subtree_control'), '+io');
    }
    const dir = join(parent, name);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'cpu.max'), `${Math.round(limits.cpus * CPU_PERIOD_US)} ${CPU_PERIOD_US}`);
    await writeFile(join(dir, 'memory.max'), String(limits.memoryBytes));
    await writeFile(join(dir, 'memory.swap.max'), '0').catch(() => {});
    await writeFile(join(dir, 'pids.max'), String(limits.pidsMax));
    if (limits.io) {
      const { device, bytesPerSecond: b, opsPerSecond: o } = limits.io;
      const v = (n: number) => (n > 0 ? String(n) : 'max');
      await writeFile(join(dir, 'io.max'), `${device} rbps=${v(b)} wbps=${v(b)} riops=${v(o)} wiops=${v(o)}`);
    }
    return this.open(name);
  }

  open(name: string): CgroupHandle {
    const dir = join(this.root, PARENT, name);
    return {
      version: 'v2',
      procsFiles: [join(dir, 'cgroup.procs')],
      paths: [dir],
      remove: () => removeGroups([dir]),
      usage: async () => {
        const usec = await readNumber(join(dir, 'cpu.stat'), 'usage_usec');
        const memory = await readNumber(join(dir, 'memory.current'));
        return {
          ...(usec !== undefined ? { cpuSeconds: usec / 1e6 } : {}),
          ...(memory !== undefined ? { memoryBytes: memory } : {}),
        };
      },
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
    const dir = (controller: string) => join(this.root, controller, PARENT, name);
    const [cpu, memory, pids] = [dir('cpu'), dir('memory'), dir('pids')];
    const blkio = existsSync(join(this.root, 'blkio')) ? dir('blkio') : undefined;
    for (const d of handle.paths) await mkdir(d, { recursive: true });
    await writeFile(join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
    await writeFile(join(cpu, 'cpu.cfs_quota_us'), String(Math.round(limits.cpus * CPU_PERIOD_US)));
    await writeFile(join(memory, 'memory.limit_in_bytes'), String(limits.memoryBytes));
    await writeFile(join(memory, 'memory.memsw.limit_in_bytes'), String(limits.memoryBytes)).catch(() => {});
    await writeFile(join(pids, 'pids.max'), String(limits.pidsMax));
    if (limits.io && blkio) {
      // blkio v1 sees only I/O its tasks issue themselves: reads, and writes with O_DIRECT (QEMU
      // opens the VM's disks so when an I/O limit is set); buffered writeback is not charged.
      const { device, bytesPerSecond: b, opsPerSecond: o } = limits.io;
      for (const d of ['read', 'write']) {
        await writeFile(join(blkio, `blkio.throttle.${d}_bps_device`), `${device} ${b}`);
        await writeFile(join(blkio, `blkio.throttle.${d}_iops_device`), `${device} ${o}`);
      }
    }
    return handle;
  }

  open(name: string): CgroupHandle {
    // blkio and cpuacct only where mounted: hosts without them still get CPU, memory and pids
    // limits. cpuacct (CPU time, for metrics) is its own hierarchy on some hosts (these ones),
    // co-mounted with cpu on others; joining the same group twice is harmless.
    const optional = ['blkio', 'cpuacct'].filter((c) => existsSync(join(this.root, c)));
    const controllers = ['cpu', 'memory', 'pids', ...optional];
    const paths = controllers.map((c) => join(this.root, c, PARENT, name));
    const dir = (controller: string) => join(this.root, controller, PARENT, name);
    return {
      version: 'v1',
      procsFiles: paths.map((p) => join(p, 'cgroup.procs')),
      paths,
      remove: () => removeGroups(paths),
      usage: async () => {
        const ns = await readNumber(join(dir('cpuacct'), 'cpuacct.usage'));
        const memory = await readNumber(join(dir('memory'), 'memory.usage_in_bytes'));
        return {
          ...(ns !== undefined ? { cpuSeconds: ns / 1e9 } : {}),
          ...(memory !== undefined ? { memoryBytes: memory } : {}),
        };
      },
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

/**
 * Picks the cgroup version this host runs. Without a writable hierarchy the agent refuses to
 * start (CGROUPS_UNAVAILABLE): VMs without CPU, memory and pids limits let one tenant starve
 * the others, so running without them must be the operator's explicit choice (`off`).
 */
export async function detectCgroups(
  setting: 'on' | 'off',
  root = '/sys/fs/cgroup',
): Promise<{ state: CgroupState; driver?: CgroupDriver; reason: string }> {
  if (setting === 'off') return { state: 'off', reason: 'disabled by configuration (WARREN_CGROUPS=off)' };
  let driver: CgroupDriver | undefined;
  if (existsSync(join(root, 'cgroup.controllers'))) driver = new CgroupV2(root);
  else if (existsSync(join(root, 'memory', 'memory.limit_in_bytes'))) driver = new CgroupV1(root);
  if (!driver) {
    throw new WarrenError(
      'CGROUPS_UNAVAILABLE',
      `no cgroup v1 or v2 hierarchy at ${root}: mount one, point WARREN_CGROUP_ROOT at it, or set WARREN_CGROUPS=off to run VMs without resource limits`,
    );
  }
  const probe = `probe-${process.pid}`;
  try {
    const h = await driver.create(probe, { cpus: 1, memoryBytes: 64 * 1024 * 1024, pidsMax: 16 });
    await h.remove();
  } catch (e) {
    throw new WarrenError(
      'CGROUPS_UNAVAILABLE',
      `cgroup ${driver.version} at ${root} is not writable (${(e as Error).message}): run the agent as root with the hierarchy mounted read-write, or set WARREN_CGROUPS=off to run VMs without resource limits`,
    );
  }
  return { state: driver.version, driver, reason: `cgroup ${driver.version} at ${root}` };
}

/** Whether a driver can limit I/O on this host: v2 needs the io controller, v1 the blkio hierarchy. */
export async function supportsIoLimits(driver: CgroupDriver): Promise<boolean> {
  if (driver.version === 'v1')
    return existsSync(join(driver.root, 'blkio', 'blkio.throttle.read_bps_device'));
  const controllers = await readFile(join(driver.root, 'cgroup.controllers'), 'utf8').catch(() => '');
  return controllers.split(/\s+/).includes('io');
}

/**
 * The whole disk (`major:minor`) a path's filesystem is on, the device an I/O limit is written
 * for; undefined when that is no block device (tmpfs, overlayfs, a network filesystem).
 */
export async function blockDeviceOf(path: string): Promise<string | undefined> {
  const dev = (await stat(path)).dev;
  // Linux's dev_t encoding (glibc's gnu_dev_major/minor).
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & ~0xff);
  const sys = `/sys/dev/block/${major}:${minor}`;
  if (!existsSync(sys)) return undefined;
  // Limits apply to whole disks only: a partition's limit goes to its disk.
  if (existsSync(join(sys, 'partition'))) return (await readFile(join(sys, '..', 'dev'), 'utf8')).trim();
  return `${major}:${minor}`;
}

/** The cgroup paths a process is in, from /proc (for tests and diagnostics). */
export async function cgroupsOf(pid: number): Promise<string> {
  return readFile(`/proc/${pid}/cgroup`, 'utf8');
}
