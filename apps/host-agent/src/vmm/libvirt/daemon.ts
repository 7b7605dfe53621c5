import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { access, mkdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '@warren/images';
import { WarrenError } from '@warren/protocol';
import { DEFAULT_LIBVIRT_URI, type Virsh } from './virsh.ts';

/** Debian's packages for the driver, without libvirt-daemon-system (it pulls in systemd). */
export const LIBVIRT_PACKAGES = 'libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients';
/** The user Debian's libvirtd resolves at start (its built-in default for QEMU); it must exist. */
const QEMU_USER = 'libvirt-qemu';
/** Where this module writes the output of a libvirtd it started. */
export const LIBVIRTD_LOG = '/var/log/libvirt/libvirtd.log';
/** A fresh libvirtd answers in ~1-2 s here; a generous bound for a loaded CI machine. */
const START_TIMEOUT_MS = 30_000;

/** A daemon this module started, to be stopped (by pid) by whoever asked for it. */
export interface StartedDaemon {
  name: 'virtlogd' | 'libvirtd';
  pid: number;
}

export interface EnsureLibvirtdOptions {
  virsh: Virsh;
  log?: (message: string) => void;
}

/**
 * Makes sure libvirtd answers on the driver's connection, starting what is missing on a host
 * without systemd, idempotently:
 *  - a libvirtd that already answers (the operator's, systemd's, an earlier run's) is used as is;
 *  - otherwise, only for `qemu:///system` and only as root: the `libvirt-qemu` system user
 *    (libvirtd will not start without it), /var/log/libvirt, `virtlogd -d` unless one runs, and
 *    `tini -s -- libvirtd` in its own session (tini reaps the QEMUs libvirtd daemonizes at once;
 *    under a slow PID 1 every destroy would wait ~1.7 s for the reap).
 * No configuration file is written: each domain carries its own DAC label (domain-xml.ts), so
 * libvirtd's qemu.conf (absent on such a host; the operator's where present) keeps its defaults.
 * Returns what it started, for tests to stop; the host agent leaves them running (its VMs run
 * in them, and outlive it).
 */
export async function ensureLibvirtd(options: EnsureLibvirtdOptions): Promise<StartedDaemon[]> {
  const { virsh, log } = options;
  const first = await answers(virsh);
  if (first === true) return [];
  const unreachable = (why: string) =>
    new WarrenError(
      'HOST_UNSUPPORTED',
      `WARREN_VMM=libvirt: cannot reach libvirtd at ${virsh.uri} (${first}); ${why}`,
    );
  if (virsh.uri !== DEFAULT_LIBVIRT_URI)
    throw unreachable('start the libvirt daemon for that connection, or use qemu:///system');
  if (process.getuid?.() !== 0) throw unreachable('run the host agent as root, or start libvirtd yourself');
  for (const binary of ['/usr/sbin/libvirtd', '/usr/sbin/virtlogd', '/usr/bin/tini']) {
    if (!(await exists(binary)))
      throw unreachable(
        `${binary} is missing: run scripts/install-deps.sh (apt-get install ${LIBVIRT_PACKAGES} tini)`,
      );
  }
  if (await alive('/run/libvirtd.pid', 'libvirtd')) {
    throw unreachable('a libvirtd runs but does not answer: see its log, or restart it');
  }
  const started: StartedDaemon[] = [];
  try {
    await ensureQemuUser();
    await mkdir('/var/log/libvirt/qemu', { recursive: true });
    await mkdir('/var/lib/libvirt', { recursive: true });
    await mkdir('/run/libvirt', { recursive: true });
    if (!(await alive('/run/virtlogd.pid', 'virtlogd'))) {
      // virtlogd keeps each domain's QEMU log (stderr) in /var/log/libvirt/qemu, rotated by size.
      await run('/usr/sbin/virtlogd', ['-d'], { errorCode: 'HOST_UNSUPPORTED' });
      const pid = await alive('/run/virtlogd.pid', 'virtlogd');
      if (!pid) throw new Error('virtlogd -d did not leave a running virtlogd');
      started.push({ name: 'virtlogd', pid });
      log?.(`started virtlogd (pid ${pid})`);
    }
    const out = openSync(LIBVIRTD_LOG, 'a', 0o600);
    const child = spawn('/usr/bin/tini', ['-s', '--', '/usr/sbin/libvirtd'], {
      detached: true,
      stdio: ['ignore', out, out],
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
    });
    closeSync(out);
    if (child.pid === undefined) throw new Error('cannot start tini');
    child.unref();
    started.push({ name: 'libvirtd', pid: child.pid });
    log?.(`started libvirtd under tini (pid ${child.pid}); its log: ${LIBVIRTD_LOG}`);
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      const ok = await answers(virsh);
      if (ok === true) return started;
      if (child.exitCode !== null || Date.now() > deadline)
        throw new Error(`libvirtd did not answer within ${START_TIMEOUT_MS} ms: ${ok}`);
      await sleep(100);
    }
  } catch (e) {
    await stopDaemons(started);
    throw unreachable(`starting it failed: ${(e as Error).message}; see ${LIBVIRTD_LOG}`);
  }
}

/** Stops daemons that ensureLibvirtd started, by pid, each after checking the pid is still that daemon. */
export async function stopDaemons(started: StartedDaemon[]): Promise<void> {
  for (const d of [...started].reverse()) {
    const comm = d.name === 'libvirtd' ? 'tini' : 'virtlogd';
    if ((await commOf(d.pid)) !== comm) continue;
    try {
      process.kill(d.pid, 'SIGTERM');
    } catch {
      continue;
    }
    const deadline = Date.now() + 15_000;
    while ((await commOf(d.pid)) === comm && Date.now() < deadline) await sleep(50);
  }
}

async function answers(virsh: Virsh): Promise<true | string> {
  try {
    await virsh.run(['version'], 20_000);
    return true;
  } catch (e) {
    return (e as Error).message;
  }
}

async function ensureQemuUser(): Promise<void> {
  const passwd = await readFile('/etc/passwd', 'utf8');
  if (passwd.split('\n').some((l) => l.startsWith(`${QEMU_USER}:`))) return;
  await run('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', QEMU_USER], {
    errorCode: 'HOST_UNSUPPORTED',
  });
}

/** The pid in `pidFile` when that process runs and is `comm` (not a reused pid); undefined otherwise. */
async function alive(pidFile: string, comm: string): Promise<number | undefined> {
  const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 1) return undefined;
  return (await commOf(pid)) === comm ? pid : undefined;
}

async function commOf(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (!stat) return undefined;
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X') return undefined;
  return stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
