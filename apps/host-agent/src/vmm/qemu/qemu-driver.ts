import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { chown, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { VerifiedImage } from '@warren/images';
import { WarrenError } from '@warren/protocol';
import { VirtioSerialTransport } from '../../guest/transport.ts';
import { writeCappedLog } from '../console-log.ts';
import {
  capabilities,
  DISK_NAMES,
  type DiskChains,
  type DiskName,
  type RunningVm,
  type SnapshotTaken,
  type VmDiskSpec,
  type VmExit,
  type VmLaunchSpec,
  type VmmDriver,
} from '../driver.ts';
import { connectSocket, hostTscKHz } from '../host-io.ts';
import { createTops, createVmDisks, INITIAL_CHAINS } from '../vm-disks.ts';
import { fileSizeLimit, hostPathOf, launcher, prepareJail, resolveQemuBinary, TAP_FD } from './jail.ts';
import { JAIL_PATHS, processName, QEMU_FILES, qemuArgs } from './qemu-args.ts';
import {
  announceSizes,
  commitLayers,
  loadSnapshot,
  saveForSuspend,
  switchToTops,
  takeSnapshot,
} from './qemu-snapshot.ts';
import { QmpClient } from './qmp-client.ts';

/** How long merging a disk's frozen layers into its base may take (they hold what changed between two backups). */
const MERGE_TIMEOUT_MS = 30 * 60_000;

export interface QemuDriverOptions {
  binary: string;
  tcgTranslationCacheMiB: number;
  /** Size at which a VM's console.log is rotated (one older file is kept). */
  consoleLogBytes: number;
}

/** Where the host agent finds a VM's sockets: in its jail, or (QEMUs started before jails) in the VM directory. */
interface Sockets {
  qmp: string;
  agent: string;
  console?: string;
}

/**
 * QEMU `-M microvm`, controlled over QMP, each VM's QEMU confined by jail.ts. QEMU runs in its
 * own session (setsid), so it outlives the host agent; a restarted agent finds it again through
 * the pid file, after checking that the pid still belongs to this VM's QEMU.
 */
export class QemuDriver implements VmmDriver {
  readonly name = 'qemu';
  readonly #options: QemuDriverOptions;
  #hostTscKHz: number | undefined;

  constructor(options: QemuDriverOptions) {
    this.#options = options;
  }

  readonly capabilities = capabilities({
    accelerators: ['kvm', 'tcg'],
    reAttach: true,
    jailed: true,
    memorySnapshots: true,
    diskSnapshots: true,
    suspend: true,
  });
  readonly ownModes = [QEMU_FILES.jail];

  createDisks(dir: string, disks: VmDiskSpec): Promise<void> {
    return createVmDisks(dir, disks);
  }

  async snapshot(
    vm: RunningVm,
    spec: VmLaunchSpec,
    dir: string,
    tops: DiskChains,
    options?: { memory?: 'stream' },
  ): Promise<SnapshotTaken> {
    if (!(vm instanceof QemuVm)) throw new WarrenError('INTERNAL', `VM ${spec.id} is not a QEMU driver VM`);
    if (!spec.jail) throw new WarrenError('INTERNAL', `VM ${spec.id} has no uid`);
    for (const layer of [tops.root.at(-1)!, tops.data.at(-1)!])
      await chown(join(spec.dir, layer), spec.jail.uid, spec.jail.gid);
    const disks = spec.disks ?? INITIAL_CHAINS;
    return takeSnapshot({
      vmDir: spec.dir,
      pid: vm.pid,
      qmp: vm.qmp,
      ids: spec.jail,
      disks,
      tops,
      dir,
      ...(options?.memory ? { memory: options.memory } : {}),
    });
  }

  async announceDiskSizes(vm: RunningVm, spec: VmLaunchSpec): Promise<void> {
    if (!(vm instanceof QemuVm)) throw new WarrenError('INTERNAL', `VM ${spec.id} is not a QEMU driver VM`);
    await announceSizes(vm.qmp, spec.disks ?? INITIAL_CHAINS);
  }

  async suspend(vm: RunningVm, spec: VmLaunchSpec, dir: string): Promise<SnapshotTaken> {
    if (!(vm instanceof QemuVm)) throw new WarrenError('INTERNAL', `VM ${spec.id} is not a QEMU driver VM`);
    if (!spec.jail) throw new WarrenError('INTERNAL', `VM ${spec.id} has no uid`);
    return saveForSuspend({ vmDir: spec.dir, pid: vm.pid, qmp: vm.qmp, ids: spec.jail, dir });
  }

  async newTops(
    dir: string,
    frozen: DiskChains,
    image: VerifiedImage,
    disks?: readonly DiskName[],
  ): Promise<DiskChains> {
    return createTops(dir, frozen, (await stat(image.rootfsPath)).size, disks);
  }

  async freezeDisks(vm: RunningVm, spec: VmLaunchSpec, tops: DiskChains): Promise<void> {
    if (!(vm instanceof QemuVm)) throw new WarrenError('INTERNAL', `VM ${spec.id} is not a QEMU driver VM`);
    if (!spec.jail) throw new WarrenError('INTERNAL', `VM ${spec.id} has no uid`);
    const disks = spec.disks ?? INITIAL_CHAINS;
    for (const disk of DISK_NAMES)
      if (tops[disk].length > disks[disk].length)
        await chown(join(spec.dir, tops[disk].at(-1)!), spec.jail.uid, spec.jail.gid);
    await switchToTops(vm.qmp, disks, tops);
  }

  async mergeLayers(vm: RunningVm, spec: VmLaunchSpec, disk: DiskName, count: number): Promise<void> {
    if (!(vm instanceof QemuVm)) throw new WarrenError('INTERNAL', `VM ${spec.id} is not a QEMU driver VM`);
    await commitLayers(vm.qmp, disk, (spec.disks ?? INITIAL_CHAINS)[disk], count, MERGE_TIMEOUT_MS);
  }

  longestSocketPath(dir: string): string {
    return hostPathOf(dir, JAIL_PATHS.console);
  }

  consoleLog(dir: string): string {
    return join(dir, QEMU_FILES.console);
  }

  async launch(spec: VmLaunchSpec): Promise<RunningVm> {
    const ids = spec.jail;
    if (!ids) throw new WarrenError('INTERNAL', `VM ${spec.id} has no uid to run its QEMU as`);
    this.#hostTscKHz ??= await hostTscKHz();
    const binary = await resolveQemuBinary(this.#options.binary);
    const { libDirs } = await prepareJail(spec, ids);
    const args = qemuArgs(spec, {
      ...this.#options,
      ...(this.#hostTscKHz ? { hostTscKHz: this.#hostTscKHz } : {}),
      ...(spec.network ? { tapFd: TAP_FD } : {}),
    });
    const kvm = spec.accel === 'kvm' ? await deviceNumber('/dev/kvm') : undefined;
    const l = launcher(spec, args, {
      binary,
      ids,
      libDirs,
      fsizeBytes: await fileSizeLimit(spec),
      ...(kvm ? { kvm } : {}),
    });
    const pidFile = join(spec.dir, QEMU_FILES.pid);
    await rm(pidFile, { force: true });
    const logFd = openSync(join(spec.dir, QEMU_FILES.log), 'a', 0o600);
    for (const [name, text] of Object.entries(l.scripts))
      await writeFile(join(spec.dir, name), text, { mode: 0o700 });
    const child = spawn('/bin/sh', [join(spec.dir, 'launch.sh')], {
      cwd: spec.dir,
      detached: true,
      stdio: ['ignore', logFd, logFd],
      env: l.env,
    });
    closeSync(logFd);
    const launcherPid = child.pid;
    if (launcherPid === undefined) {
      throw new WarrenError('HOST_UNSUPPORTED', 'cannot start the QEMU launcher (/bin/sh)');
    }
    const childExit = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    const sockets = jailSockets(spec.dir);
    let qmp: QmpClient | undefined;
    try {
      qmp = await connectQmp(sockets.qmp, () => child.exitCode !== null || child.signalCode !== null);
      // Written by the launcher before it became QEMU: QEMU's pid outside its PID namespace.
      const pid = Number((await readFile(pidFile, 'utf8')).trim());
      if (!(await isVmProcess(pid, spec))) throw new Error(`pid ${pid} in ${pidFile} is not this VM's QEMU`);
      if (spec.restore) await loadSnapshot(qmp, spec.dir, spec.restore);
      const console = await connectSocket(sockets.console!, 5_000);
      const vm = new QemuVm(spec, pid, sockets, qmp, console, this.#options.consoleLogBytes, childExit, () =>
        child.unref(),
      );
      // QEMU was started paused (-S), so the console is connected before the guest's first line.
      await qmp.execute('cont');
      return vm;
    } catch (e) {
      qmp?.close();
      // The launcher leads its own process group, and QEMU stays in it.
      try {
        process.kill(-launcherPid, 'SIGKILL');
      } catch {
        // Already gone.
      }
      const log = await logTail(spec.dir);
      throw new WarrenError(
        'VM_BOOT_FAILED',
        `QEMU for ${spec.id} did not start: ${(e as Error).message}\n${log}`,
      );
    }
  }

  async attach(spec: VmLaunchSpec, options: { resume?: boolean } = {}): Promise<RunningVm | undefined> {
    const pid = Number((await readFile(join(spec.dir, QEMU_FILES.pid), 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 1) return undefined;
    const kind = await vmProcessKind(pid, spec);
    if (!kind) return undefined;
    // A QEMU from before jails keeps its sockets in the VM directory and its console in a file.
    const sockets: Sockets =
      kind === 'jailed'
        ? jailSockets(spec.dir)
        : { qmp: join(spec.dir, 'qmp.sock'), agent: join(spec.dir, 'agent.sock') };
    const qmp = await QmpClient.connect(sockets.qmp, 5_000).catch(() => undefined);
    if (!qmp) return undefined;
    const console = sockets.console
      ? await connectSocket(sockets.console, 5_000).catch(() => undefined)
      : undefined;
    // An agent that died during a snapshot left its guest paused (snapshots are the only
    // pause): resume it. `cont` also takes the images back from a finished migration.
    const status = await qmp.execute<{ status: string }>('query-status').catch(() => undefined);
    if (
      options.resume !== false &&
      status &&
      ['paused', 'postmigrate', 'finish-migrate'].includes(status.status)
    )
      await qmp.execute('cont').catch(() => {});
    return new QemuVm(spec, pid, sockets, qmp, console, this.#options.consoleLogBytes, undefined, () => {});
  }
}

function jailSockets(dir: string): Sockets {
  return {
    qmp: hostPathOf(dir, JAIL_PATHS.qmp),
    agent: hostPathOf(dir, JAIL_PATHS.agent),
    console: hostPathOf(dir, JAIL_PATHS.console),
  };
}

class QemuVm implements RunningVm {
  readonly pid: number;
  readonly transport: VirtioSerialTransport;
  readonly exited: Promise<VmExit>;
  /** For the driver's own use (snapshots); nothing outside the driver talks QMP. */
  readonly qmp: QmpClient;
  readonly #qmp: QmpClient;
  readonly #console: Socket | undefined;
  #shutdownReason: string | undefined;
  #detached = false;
  readonly #release: () => void;

  constructor(
    spec: VmLaunchSpec,
    pid: number,
    sockets: Sockets,
    qmp: QmpClient,
    console: Socket | undefined,
    consoleLogBytes: number,
    launcherExit: Promise<{ code: number | null; signal: string | null }> | undefined,
    release: () => void,
  ) {
    this.#release = release;
    this.pid = pid;
    this.qmp = qmp;
    this.#qmp = qmp;
    this.#console = console;
    this.transport = new VirtioSerialTransport(sockets.agent);
    if (console) {
      console.on('error', () => {});
      // Ends when QEMU closes the socket or the agent lets go; the log is only ever capped, never lost to an error here.
      writeCappedLog(console, join(spec.dir, QEMU_FILES.console), consoleLogBytes).catch(() => {});
    }
    qmp.on('event', (e) => {
      if (e.event === 'SHUTDOWN') this.#shutdownReason = String(e.data?.reason ?? 'unknown');
    });
    // The launcher (unshare) waits for QEMU and ends as QEMU ended; a re-attached QEMU is
    // another process's child, so all we can see is that it is gone.
    const ended = launcherExit ?? waitUntilGone(pid, spec, qmp).then(() => ({ code: null, signal: null }));
    this.exited = ended.then(async ({ code, signal }) => {
      qmp.close();
      console?.destroy();
      return describeExit(code, signal, this.#shutdownReason, await logTail(spec.dir));
    });
  }

  async quit(): Promise<void> {
    await this.#qmp.execute('quit').catch(() => {});
  }

  kill(): void {
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }

  detach(): void {
    if (this.#detached) return;
    this.#detached = true;
    this.#qmp.removeAllListeners('event');
    this.#qmp.close();
    this.#console?.destroy();
    this.#release();
  }
}
function describeExit(
  code: number | null,
  signal: string | null,
  shutdown: string | undefined,
  log: string,
): VmExit {
  if (shutdown === 'guest-shutdown') return { code, signal, reason: 'guest powered off', graceful: true };
  if (shutdown === 'host-qmp-quit')
    return { code, signal, reason: 'stopped by the host (QMP quit)', graceful: true };
  if (shutdown === 'guest-reset')
    return { code, signal, reason: 'guest rebooted (VMs run with -no-reboot)', graceful: true };
  if (shutdown === 'guest-panic') return { code, signal, reason: 'guest kernel panic', graceful: false };
  const why = signal
    ? `QEMU killed by ${signal}`
    : code !== null
      ? `QEMU exited with code ${code}`
      : 'QEMU process vanished without a shutdown event (killed or crashed)';
  return { code, signal, reason: log ? `${why}; last log lines: ${log}` : why, graceful: false };
}

async function connectQmp(path: string, exited: () => boolean): Promise<QmpClient> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await QmpClient.connect(path, 5_000);
    } catch (e) {
      if (exited()) throw new Error('QEMU exited during start');
      if (Date.now() > deadline) throw e;
      await sleep(20);
    }
  }
}

/**
 * `jailed` if `pid` is alive (not a zombie), its command line names this VM and its environment
 * this VM directory (jail.ts puts it there); `legacy` for a QEMU from before jails, whose
 * command line names the directory; undefined for anything else (a reused pid).
 */
async function vmProcessKind(pid: number, spec: VmLaunchSpec): Promise<'jailed' | 'legacy' | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return undefined;
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    if (!argv.some((a) => a.startsWith(`${processName(spec.id)},`))) return undefined;
    const env = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
    if (env.includes(`WARREN_VM_DIR=${spec.dir}`)) return 'jailed';
    return argv.some((a) => a.includes(spec.dir)) ? 'legacy' : undefined;
  } catch {
    return undefined;
  }
}

async function isVmProcess(pid: number, spec: VmLaunchSpec): Promise<boolean> {
  return (await vmProcessKind(pid, spec)) !== undefined;
}

/** The major and minor number of a device node, for a node of the jail's own. */
async function deviceNumber(path: string): Promise<{ major: number; minor: number }> {
  const s = await stat(path).catch(() => undefined);
  if (!s?.isCharacterDevice())
    throw new WarrenError('HOST_UNSUPPORTED', `${path} is missing; use WARREN_ACCEL=tcg`);
  // Linux's dev_t encoding (glibc's gnu_dev_major/minor).
  const major = ((s.rdev >> 8) & 0xfff) | (Math.floor(s.rdev / 2 ** 32) & ~0xfff);
  const minor = (s.rdev & 0xff) | ((s.rdev >> 12) & ~0xff);
  return { major, minor };
}

async function waitUntilGone(pid: number, spec: VmLaunchSpec, qmp: QmpClient): Promise<void> {
  let qmpClosed = false;
  qmp.once('close', () => {
    qmpClosed = true;
  });
  for (;;) {
    await sleep(qmpClosed ? 20 : 250);
    if (!(await isVmProcess(pid, spec))) return;
  }
}

async function logTail(dir: string): Promise<string> {
  const text = await readFile(`${dir}/${QEMU_FILES.log}`, 'utf8').catch(() => '');
  return text.trim().split('\n').slice(-5).join(' | ').slice(-1000);
}
