import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '@warren/images';
import { WarrenError } from '@warren/protocol';
import { VirtioSerialTransport } from '../../guest/transport.ts';
import type { RunningVm, VmExit, VmLaunchSpec, VmmDriver } from '../driver.ts';
import { processName, QEMU_FILES, qemuArgs } from './qemu-args.ts';
import { QmpClient } from './qmp-client.ts';

export interface QemuDriverOptions {
  binary: string;
  tcgTranslationCacheMiB: number;
}

/**
 * QEMU `-M microvm`, controlled over QMP. QEMU runs in its own session (setsid), so it
 * outlives the host agent; a restarted agent finds it again through the pid file, after
 * checking that the pid still belongs to this VM's QEMU.
 */
export class QemuDriver implements VmmDriver {
  readonly name = 'qemu';
  readonly #options: QemuDriverOptions;
  #hostTscKHz: number | undefined;

  constructor(options: QemuDriverOptions) {
    this.#options = options;
  }

  async createRootDisk(baseImage: string, target: string): Promise<void> {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', baseImage, target], {
      errorCode: 'HOST_UNSUPPORTED',
    });
  }

  async launch(spec: VmLaunchSpec): Promise<RunningVm> {
    this.#hostTscKHz ??= await hostTscKHz();
    const args = qemuArgs(spec, {
      ...this.#options,
      ...(this.#hostTscKHz ? { hostTscKHz: this.#hostTscKHz } : {}),
    });
    const logFd = openSync(`${spec.dir}/${QEMU_FILES.log}`, 'a');
    // The shell joins the VM's cgroups and then becomes QEMU, so QEMU is limited from its
    // first instruction and never runs outside them.
    const joinCgroups = 'for f in $WARREN_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done; exec "$@"';
    const child = spawn('/bin/sh', ['-c', joinCgroups, 'sh', this.#options.binary, ...args], {
      cwd: spec.dir,
      detached: true,
      stdio: ['ignore', logFd, logFd],
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        WARREN_CGROUP_PROCS: spec.cgroup?.procsFiles.join(' ') ?? '',
      },
    });
    closeSync(logFd);
    const pid = child.pid;
    if (pid === undefined) {
      throw new WarrenError(
        'HOST_UNSUPPORTED',
        `cannot start ${this.#options.binary}; install qemu-system-x86`,
      );
    }
    await writeFile(`${spec.dir}/${QEMU_FILES.pid}`, `${pid}\n`);
    const childExit = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    let qmp: QmpClient;
    try {
      qmp = await connectQmp(spec.dir, () => child.exitCode !== null || child.signalCode !== null);
    } catch (e) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
      const log = await logTail(spec.dir);
      throw new WarrenError(
        'VM_BOOT_FAILED',
        `QEMU for ${spec.id} did not start: ${(e as Error).message}\n${log}`,
      );
    }
    // The child stays referenced while it is tracked, so awaiting its exit keeps Node
    // alive; detach() lets go of it.
    return new QemuVm(spec, pid, qmp, childExit, () => child.unref());
  }

  async attach(spec: VmLaunchSpec): Promise<RunningVm | undefined> {
    const pid = Number((await readFile(`${spec.dir}/${QEMU_FILES.pid}`, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 1) return undefined;
    if (!(await isVmProcess(pid, spec))) return undefined;
    const qmp = await QmpClient.connect(`${spec.dir}/${QEMU_FILES.qmp}`, 5_000).catch(() => undefined);
    if (!qmp) return undefined;
    return new QemuVm(spec, pid, qmp, undefined, () => {});
  }
}

class QemuVm implements RunningVm {
  readonly pid: number;
  readonly transport: VirtioSerialTransport;
  readonly exited: Promise<VmExit>;
  readonly #qmp: QmpClient;
  #shutdownReason: string | undefined;
  #detached = false;
  readonly #release: () => void;

  constructor(
    spec: VmLaunchSpec,
    pid: number,
    qmp: QmpClient,
    childExit: Promise<{ code: number | null; signal: string | null }> | undefined,
    release: () => void,
  ) {
    this.#release = release;
    this.pid = pid;
    this.#qmp = qmp;
    this.transport = new VirtioSerialTransport(`${spec.dir}/${QEMU_FILES.agent}`);
    qmp.on('event', (e) => {
      if (e.event === 'SHUTDOWN') this.#shutdownReason = String(e.data?.reason ?? 'unknown');
    });
    // Our own child reports its exit status; a re-attached QEMU is another process's
    // child, so all we can see is that it is gone.
    const ended = childExit ?? waitUntilGone(pid, spec, qmp).then(() => ({ code: null, signal: null }));
    this.exited = ended.then(async ({ code, signal }) => {
      qmp.close();
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

async function connectQmp(dir: string, exited: () => boolean): Promise<QmpClient> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await QmpClient.connect(`${dir}/${QEMU_FILES.qmp}`, 5_000);
    } catch (e) {
      if (exited()) throw new Error('QEMU exited during start');
      if (Date.now() > deadline) throw e;
      await sleep(20);
    }
  }
}

/** True if `pid` is alive (not a zombie) and its command line names this VM. */
async function isVmProcess(pid: number, spec: VmLaunchSpec): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    return (
      argv.some((a) => a.startsWith(`${processName(spec.id)},`)) && argv.some((a) => a.includes(spec.dir))
    );
  } catch {
    return false;
  }
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

async function hostTscKHz(): Promise<number | undefined> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1]);
  return Number.isFinite(mhz) && mhz > 0 ? Math.round(mhz * 1000) : undefined;
}

async function logTail(dir: string): Promise<string> {
  const text = await readFile(`${dir}/${QEMU_FILES.log}`, 'utf8').catch(() => '');
  return text.trim().split('\n').slice(-5).join(' | ').slice(-1000);
}
