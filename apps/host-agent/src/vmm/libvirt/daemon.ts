import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
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

/** What ensureLibvirtd started or wrote: nothing at all when a libvirtd already answered. */
export interface StartedLibvirt {
  daemons: StartedDaemon[];
  /** QEMU_CONF, when this call wrote it (the host had none). */
  wroteConfig?: string;
}

/** libvirtd's QEMU driver configuration; written only where none exists (see QEMU_CONF_TEXT). */
export const QEMU_CONF = '/etc/libvirt/qemu.conf';
/**
 * Sets only the user libvirtd probes QEMU as and runs unlabelled domains as. With Debian's
 * default (libvirt-qemu) and a /dev/kvm that user cannot open, libvirt 9.0 finds its cached QEMU
 * capabilities "probed with KVM, KVM not available now" at every lookup and probes again: each
 * `virsh create` took ~10 s instead of ~0.35 s (measured here). Warren's domains never run as this
 * user: each carries a static label with its VM's own uid (domain-xml.ts).
 */
const QEMU_CONF_TEXT = `# Written by Warren (apps/host-agent/src/vmm/libvirt/daemon.ts) because this host had none.
# Warren's domains run as their VM's own uid (a static DAC label in each domain's XML); this user
# is the one libvirtd probes QEMU's capabilities as, and it must be able to open /dev/kvm.
user = "root"
group = "root"
`;

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
 * and, only where the host has no /etc/libvirt/qemu.conf at all, one that makes libvirtd probe
 * QEMU as root (QEMU_CONF_TEXT says why); an operator's file is never touched.
 * Returns what it started, for tests to stop; the host agent leaves them running (its VMs run
 * in them, and outlive it).
 */
export async function ensureLibvirtd(options: EnsureLibvirtdOptions): Promise<StartedLibvirt> {
  const { virsh, log } = options;
  const first = await answers(virsh);
  if (first === true) return { daemons: [] };
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
  let wroteConfig: string | undefined;
  try {
    await ensureQemuUser();
    await mkdir(dirname(QEMU_CONF), { recursive: true });
    // 'wx': never over an operator's file, even one that appeared since the check.
    if (!(await exists(QEMU_CONF))) {
      await writeFile(QEMU_CONF, QEMU_CONF_TEXT, { mode: 0o644, flag: 'wx' });
      wroteConfig = QEMU_CONF;
      log?.(`wrote ${QEMU_CONF} (this host had none): QEMU capability probes run as root`);
    }
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
      if (ok === true) return { daemons: started, ...(wroteConfig ? { wroteConfig } : {}) };
      if (child.exitCode !== null || Date.now() > deadline)
        throw new Error(`libvirtd did not answer within ${START_TIMEOUT_MS} ms: ${ok}`);
      await sleep(100);
    }
  } catch (e) {
    await stopLibvirt({ daemons: started, ...(wroteConfig ? { wroteConfig } : {}) });
    throw unreachable(`starting it failed: ${(e as Error).message}; see ${LIBVIRTD_LOG}`);
  }
}

/**
 * Undoes what ensureLibvirtd did (tests; the host agent leaves libvirtd running for its VMs):
 * stops the daemons it started, by pid, each after checking the pid is still that daemon, and
 * removes the qemu.conf it wrote if it still holds what it wrote.
 */
export async function stopLibvirt(started: StartedLibvirt): Promise<void> {
  for (const d of [...started.daemons].reverse()) {
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
  if (started.wroteConfig && (await readFile(started.wroteConfig, 'utf8').catch(() => '')) === QEMU_CONF_TEXT)
    await rm(started.wroteConfig, { force: true });
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
