import { chmod, chown, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { WarrenError } from '@warren/protocol';
import { VirtioSerialTransport } from '../../guest/transport.ts';
import { writeCappedLog } from '../console-log.ts';
import type { RunningVm, VmDiskSpec, VmExit, VmLaunchSpec, VmmDriver } from '../driver.ts';
import { connectSocket, hostTscKHz } from '../host-io.ts';
import { createVmDisks, vmDisks } from '../vm-disks.ts';
import { LIBVIRT_CAPABILITIES, LIBVIRT_CONFINEMENT } from './confinement.ts';
import { ensureLibvirtd, type StartedLibvirt } from './daemon.ts';
import { domainName, domainXml, LIBVIRT_FILES, metadataDir } from './domain-xml.ts';
import { type LifecycleEvent, LifecycleEvents, Virsh, VirshError } from './virsh.ts';

export interface LibvirtDriverOptions {
  /** libvirt connection URI (default qemu:///system). */
  uri?: string;
  /** The QEMU binary libvirt runs (`<emulator>`); an absolute path. */
  emulator?: string;
  tcgTranslationCacheMiB: number;
  /** Size at which a VM's console.log is rotated (one older file is kept). */
  consoleLogBytes: number;
  log?: (message: string) => void;
}

/** Where libvirtd (system) keeps the pid file of each running domain's QEMU. */
const QEMU_RUN_DIR = '/run/libvirt/qemu';
/**
 * Where virtlogd keeps each domain's QEMU stderr (rotated by virtlogd at 2 MiB, 3 kept). It stays
 * after the domain is gone, one file per VM; removing it with the VM needs a destroy hook.
 */
export const QEMU_LOG_DIR = '/var/log/libvirt/qemu';
/** How often a running VM's QEMU pid is checked, in case the event stream missed its end. */
const PID_POLL_MS = 250;
/** After the pid is gone, how long the `Stopped` event (which carries the reason) may lag. */
const EVENT_GRACE_MS = 2_000;

/**
 * libvirt as a VMM backend: each VM is a transient domain (`virsh create`), gone from libvirt
 * when its QEMU ends, so nothing of it outlives the VM. The domain is named after the VM and the
 * agent's data directory, and its `<metadata>` names the VM directory, so a restarted agent
 * re-attaches only to its own domains. Its QEMU runs as the VM's own uid; Warren's jail is not
 * applied (see confinement.ts).
 */
export class LibvirtDriver implements VmmDriver {
  readonly name = 'libvirt';
  readonly confinement = LIBVIRT_CONFINEMENT;
  readonly capabilities = LIBVIRT_CAPABILITIES;
  readonly virsh: Virsh;
  readonly #options: LibvirtDriverOptions;
  readonly #events: LifecycleEvents;
  #hostTscKHz: number | undefined;

  /**
   * The driver, once libvirtd answers (started here when the host runs none, see daemon.ts): what
   * the host agent calls for WARREN_VMM=libvirt, before it re-attaches to running VMs.
   */
  static async open(options: LibvirtDriverOptions): Promise<LibvirtDriver> {
    const driver = new LibvirtDriver(options);
    await driver.ensureDaemon();
    return driver;
  }

  constructor(options: LibvirtDriverOptions) {
    this.#options = options;
    this.virsh = new Virsh(options.uri);
    this.#events = new LifecycleEvents(this.virsh);
  }

  /**
   * Makes sure libvirtd answers, starting it (and virtlogd) when this host runs none; see
   * daemon.ts. Call once before the first launch or attach; returns what it started.
   */
  ensureDaemon(): Promise<StartedLibvirt> {
    return ensureLibvirtd({ virsh: this.virsh, ...(this.#options.log ? { log: this.#options.log } : {}) });
  }

  /** For the host agent (VmManager.open): libvirtd answers, or is started; it stays running with the VMs in it. */
  async open(): Promise<void> {
    await this.ensureDaemon();
  }

  close(): void {
    this.#events.close();
  }

  createDisks(dir: string, disks: VmDiskSpec): Promise<void> {
    return createVmDisks(dir, disks);
  }

  consoleLog(dir: string): string {
    return join(dir, LIBVIRT_FILES.consoleLog);
  }

  /** What virtlogd kept of the VM's QEMU (its log); the transient domain itself went with QEMU. */
  async forget(id: string, dir: string): Promise<void> {
    await rm(join(QEMU_LOG_DIR, `${domainName({ id, dir })}.log`), { force: true });
  }

  /** The VM's domain, while libvirt still has it, and its QEMU log, until `forget`. */
  async traces(id: string, dir: string): Promise<string[]> {
    const name = domainName({ id, dir });
    const left: string[] = [];
    try {
      await this.virsh.run(['dominfo', name]);
      left.push(`libvirt domain ${name}`);
    } catch (e) {
      if (!(e instanceof VirshError && e.noDomain)) throw e;
    }
    const log = join(QEMU_LOG_DIR, `${name}.log`);
    if (
      await stat(log).then(
        () => true,
        () => false,
      )
    )
      left.push(log);
    return left;
  }

  longestSocketPath(dir: string): string {
    return join(dir, LIBVIRT_FILES.console);
  }

  async launch(spec: VmLaunchSpec): Promise<RunningVm> {
    if (spec.skills?.length)
      throw new WarrenError(
        'HOST_UNSUPPORTED',
        `VM ${spec.id} has skill packages (${spec.skills.map((s) => s.name).join(', ')}), which the libvirt driver does not attach yet: run the tenant on a host with WARREN_VMM=qemu, or remove its skills`,
      );
    const ids = spec.jail;
    if (!ids) throw new WarrenError('INTERNAL', `VM ${spec.id} has no uid to run its QEMU as`);
    this.#hostTscKHz ??= await hostTscKHz();
    const name = domainName(spec);
    // A domain of ours under this name that no one re-attached to is a leftover: it goes.
    const stale = await this.#ownDomain(name, spec.dir);
    if (stale) await this.virsh.run(['destroy', name]).catch(() => {});
    // The VM directory is root's alone (the agent's umask 077); its own QEMU, and no other VM's,
    // may pass through it to its disks: group search for the VM's own gid (allowPassage).
    await allowPassage(spec.dir, ids);
    const disks = vmDisks(spec.dir);
    for (const file of [disks.root, disks.data, spec.image.kernelPath, spec.image.rootfsPath])
      await assertReachable(file, ids);
    for (const disk of [disks.root, disks.data]) {
      await chown(disk, ids.uid, ids.gid);
      await chmod(disk, 0o600);
    }
    for (const f of [LIBVIRT_FILES.agent, LIBVIRT_FILES.console])
      await rm(join(spec.dir, f), { force: true });
    const xmlPath = join(spec.dir, LIBVIRT_FILES.domain);
    await writeFile(
      xmlPath,
      domainXml(spec, {
        emulator: this.#options.emulator ?? '/usr/bin/qemu-system-x86_64',
        tcgTranslationCacheMiB: this.#options.tcgTranslationCacheMiB,
        ...(this.#hostTscKHz ? { hostTscKHz: this.#hostTscKHz } : {}),
      }),
      { mode: 0o600 },
    );
    const watch = new DomainWatch(this.#events, name);
    try {
      // Paused, so the VM joins its cgroup and the console is connected before the guest's first instruction.
      await this.virsh.run(['create', '--paused', xmlPath]);
      const pid = await qemuPid(name);
      if (!pid) throw new Error(`no QEMU pid for domain ${name} in ${QEMU_RUN_DIR}`);
      // libvirtd puts QEMU in cgroups of its own; the VM's cgroup (the host agent's, with its
      // CPU, memory, pids and I/O limits) takes it over, so limits are the same as under the
      // QEMU driver. Moving the process moves all its threads.
      for (const procs of spec.cgroup?.procsFiles ?? []) await writeFile(procs, String(pid));
      const console = await connectSocket(join(spec.dir, LIBVIRT_FILES.console), 5_000);
      const vm = new LibvirtVm(this.virsh, spec, name, pid, watch, console, this.#options.consoleLogBytes);
      await this.virsh.run(['resume', name]);
      return vm;
    } catch (e) {
      watch.close();
      await this.virsh.run(['destroy', name]).catch(() => {});
      const log = await logTail(name);
      throw new WarrenError(
        'VM_BOOT_FAILED',
        `libvirt domain ${name} for ${spec.id} did not start: ${(e as Error).message}${log ? `\n${log}` : ''}`,
      );
    }
  }

  async attach(spec: VmLaunchSpec): Promise<RunningVm | undefined> {
    const name = domainName(spec);
    if (!(await this.#ownDomain(name, spec.dir))) return undefined;
    // Still paused: an agent died inside launch, before the VM joined its cgroup and was resumed.
    const state = (await this.virsh.run(['domstate', name]).catch(() => '')).trim();
    if (state !== 'running') {
      await this.virsh.run(['destroy', name]).catch(() => {});
      return undefined;
    }
    const pid = await qemuPid(name);
    if (!pid) return undefined;
    const watch = new DomainWatch(this.#events, name);
    const console = await connectSocket(join(spec.dir, LIBVIRT_FILES.console), 5_000).catch(() => undefined);
    return new LibvirtVm(this.virsh, spec, name, pid, watch, console, this.#options.consoleLogBytes);
  }

  /** Whether a domain `name` runs and its Warren metadata names `dir` (not another agent's, not an operator's). */
  async #ownDomain(name: string, dir: string): Promise<boolean> {
    try {
      return metadataDir(await this.virsh.run(['dumpxml', name])) === dir;
    } catch (e) {
      if (e instanceof VirshError && e.noDomain) return false;
      throw new WarrenError('HOST_UNSUPPORTED', `libvirt: ${(e as Error).message}`);
    }
  }
}

/** Subscribes to a domain's lifecycle events from before it is created, so no `Stopped` is missed. */
class DomainWatch {
  stopped: LifecycleEvent | undefined;
  readonly #unsubscribe: () => void;
  #onStop: (() => void) | undefined;

  constructor(events: LifecycleEvents, name: string) {
    this.#unsubscribe = events.subscribe(name, (e) => {
      if (e.event !== 'Stopped') return;
      this.stopped = e;
      this.#onStop?.();
    });
  }

  /** Settles on the `Stopped` event, or `graceMs` after being asked, whichever comes first. */
  async waitStopped(graceMs: number): Promise<LifecycleEvent | undefined> {
    if (this.stopped) return this.stopped;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, graceMs);
      this.#onStop = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    return this.stopped;
  }

  /** Resolves as soon as a `Stopped` event arrives (never, if none does). */
  onStopped(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const previous = this.#onStop;
      this.#onStop = () => {
        previous?.();
        resolve();
      };
    });
  }

  close(): void {
    this.#unsubscribe();
  }
}

class LibvirtVm implements RunningVm {
  readonly pid: number;
  readonly transport: VirtioSerialTransport;
  readonly exited: Promise<VmExit>;
  readonly #virsh: Virsh;
  readonly #name: string;
  readonly #watch: DomainWatch;
  readonly #console: Socket | undefined;
  #intent: 'quit' | 'kill' | undefined;
  #detached = false;

  constructor(
    virsh: Virsh,
    spec: VmLaunchSpec,
    name: string,
    pid: number,
    watch: DomainWatch,
    console: Socket | undefined,
    consoleLogBytes: number,
  ) {
    this.#virsh = virsh;
    this.#name = name;
    this.pid = pid;
    this.#watch = watch;
    this.#console = console;
    this.transport = new VirtioSerialTransport(join(spec.dir, LIBVIRT_FILES.agent));
    if (console) {
      console.on('error', () => {});
      // Ends when QEMU closes the socket or the agent lets go; the log is only ever capped, never lost to an error here.
      writeCappedLog(console, join(spec.dir, LIBVIRT_FILES.consoleLog), consoleLogBytes).catch(() => {});
    }
    this.exited = (async () => {
      // QEMU is libvirtd's child, not ours: its end is seen as its pid going away, or libvirt's event.
      await Promise.race([watch.onStopped(), untilGone(pid, name, () => this.#detached)]);
      const event = await watch.waitStopped(EVENT_GRACE_MS);
      watch.close();
      console?.destroy();
      return describeExit(event, this.#intent, await logTail(name));
    })();
  }

  /** `virsh destroy`: libvirt ends QEMU (SIGTERM, then SIGKILL after 10 s); the guest gets no say. */
  async quit(): Promise<void> {
    this.#intent ??= 'quit';
    await this.#virsh.run(['destroy', this.#name]).catch(() => {});
  }

  kill(): void {
    this.#intent = 'kill';
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
    // libvirtd notices QEMU's end by itself; the destroy only makes sure (a domain it has not yet reaped).
    this.#virsh.run(['destroy', this.#name]).catch(() => {});
  }

  detach(): void {
    if (this.#detached) return;
    this.#detached = true;
    this.#watch.close();
    this.#console?.destroy();
  }
}

function describeExit(
  event: LifecycleEvent | undefined,
  intent: 'quit' | 'kill' | undefined,
  log: string,
): VmExit {
  const detail = event?.detail;
  if (intent === 'kill')
    return { code: null, signal: 'SIGKILL', reason: 'killed by the host (SIGKILL)', graceful: false };
  if (detail === 'Shutdown') return { code: 0, signal: null, reason: 'guest powered off', graceful: true };
  if (detail === 'Destroyed' && intent === 'quit')
    return { code: null, signal: null, reason: 'stopped by the host (virsh destroy)', graceful: true };
  if (detail === 'Destroyed')
    return {
      code: null,
      signal: null,
      reason: 'domain destroyed outside Warren (virsh destroy)',
      graceful: false,
    };
  if (detail === 'Crashed') return { code: null, signal: null, reason: 'guest crashed', graceful: false };
  const why =
    detail === 'Failed'
      ? 'QEMU ended without a shutdown (killed or crashed; libvirt: Stopped Failed)'
      : `QEMU process vanished (libvirt: ${event ? `${event.event} ${event.detail}` : 'no event'})`;
  return { code: null, signal: null, reason: log ? `${why}; last log lines: ${log}` : why, graceful: false };
}

/**
 * libvirt hands QEMU its disks, kernel and initrd by path, and QEMU opens them as the VM's uid:
 * every directory above them must let that uid through: its own VM directory does (launch sets
 * it), the ones above it (the data directory, `vms/`, the image store) need search permission for
 * others, since each VM has a uid and group of its own. A clear error here beats libvirt's
 * "Permission denied".
 */
/**
 * The agent keeps its data directory root's alone (0700, and its start-up lock-down takes any
 * other bit off again), but libvirt's QEMU opens the VM's files by path as the VM's uid. It gets
 * passage and no more, at every launch: search (not read: no listing) for others on the VMs
 * directory and the data directory above it, and the VM directory for the VM's own group only
 * (root:<vm gid> 0710), where every file keeps its own mode (the disks the VM's, the rest root's
 * 0600). A VM already running keeps its open files when the lock-down takes the bits off.
 */
async function allowPassage(vmDir: string, ids: { uid: number; gid: number }): Promise<void> {
  for (const dir of [dirname(dirname(vmDir)), dirname(vmDir)]) {
    const s = await stat(dir);
    if (!(s.mode & 0o001)) await chmod(dir, (s.mode & 0o7777) | 0o001);
  }
  await chown(vmDir, 0, ids.gid);
  await chmod(vmDir, 0o710);
}

async function assertReachable(file: string, ids: { uid: number; gid: number }): Promise<void> {
  for (let dir = dirname(file); ; dir = dirname(dir)) {
    const s = await stat(dir);
    const passes =
      s.mode & 0o001 || (s.uid === ids.uid && s.mode & 0o100) || (s.gid === ids.gid && s.mode & 0o010);
    if (!passes) {
      throw new WarrenError(
        'HOST_UNSUPPORTED',
        `libvirt runs each VM's QEMU as its own uid, which cannot pass ${dir} (mode ${(s.mode & 0o777).toString(8)}) to reach ${file}: run chmod o+x ${dir}`,
      );
    }
    if (dir === '/') return;
  }
}

/** The pid of domain `name`'s QEMU, from libvirtd's pid file, checked against the process's command line. */
async function qemuPid(name: string): Promise<number | undefined> {
  const pid = Number((await readFile(join(QEMU_RUN_DIR, `${name}.pid`), 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 1) return undefined;
  return (await isDomainProcess(pid, name)) ? pid : undefined;
}

/** Whether `pid` is alive (not a zombie) and is the QEMU of domain `name` (not a reused pid). */
async function isDomainProcess(pid: number, name: string): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    return argv.some((a) => a === `guest=${name},debug-threads=on` || a === `guest=${name}`);
  } catch {
    return false;
  }
}

async function untilGone(pid: number, name: string, stop: () => boolean): Promise<void> {
  for (;;) {
    await sleep(PID_POLL_MS);
    if (stop()) return new Promise(() => {});
    if (!(await isDomainProcess(pid, name))) return;
  }
}

/** Host TSC frequency from /proc/cpuinfo (the QEMU driver has the same; G1's seam can share one). */

async function logTail(name: string): Promise<string> {
  const text = await readFile(join(QEMU_LOG_DIR, `${name}.log`), 'utf8').catch(() => '');
  return text.trim().split('\n').slice(-5).join(' | ').slice(-1000);
}
