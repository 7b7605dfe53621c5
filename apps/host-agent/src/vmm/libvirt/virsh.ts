import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

/** The connection every call uses by default: the system libvirtd, which runs QEMU domains as root's daemon. */
export const DEFAULT_LIBVIRT_URI = 'qemu:///system';
/** Most calls answer in ~20 ms; `create` also waits for the first capability probe of a fresh libvirtd (~8-12 s here). */
const CALL_TIMEOUT_MS = 60_000;

export class VirshError extends Error {
  readonly stderr: string;
  constructor(args: string[], stderr: string) {
    super(`virsh ${args.join(' ')}: ${stderr.trim() || 'failed'}`);
    this.stderr = stderr;
  }
  /** libvirt's wording when a domain of that name does not exist (VIR_ERR_NO_DOMAIN). */
  get noDomain(): boolean {
    return /failed to get domain|Domain not found|no domain with matching name/i.test(this.stderr);
  }
}

/**
 * libvirt through `virsh`, one process per call. Measured here: 20 `virsh domstate` calls take
 * ~400 ms (~20 ms each); a VM's life makes a handful of calls (create, resume, destroy), so the
 * per-call cost is noise next to a boot. Lifecycle events come from one long-running
 * `virsh event` per driver (LifecycleEvents), not from polling.
 */
export class Virsh {
  readonly uri: string;
  readonly binary: string;

  constructor(uri = DEFAULT_LIBVIRT_URI, binary = 'virsh') {
    this.uri = uri;
    this.binary = binary;
  }

  run(args: string[], timeoutMs = CALL_TIMEOUT_MS): Promise<string> {
    const argv = ['-q', '-c', this.uri, ...args];
    return new Promise((resolve, reject) => {
      execFile(
        this.binary,
        argv,
        { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, env: { ...process.env, LC_ALL: 'C' } },
        (err, stdout, stderr) => {
          if (err) {
            const why =
              (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${this.binary} not found` : stderr;
            reject(new VirshError(args, why || err.message));
          } else resolve(stdout);
        },
      );
    });
  }

  /** Starts `virsh event --loop` for lifecycle events of every domain (filtered by the caller). */
  events(onLine: (line: string) => void): ChildProcess {
    const child = spawn(this.binary, ['-q', '-c', this.uri, 'event', '--loop', '--event', 'lifecycle'], {
      stdio: ['ignore', 'pipe', 'ignore'],
      env: { ...process.env, LC_ALL: 'C' },
    });
    createInterface({ input: child.stdout! }).on('line', onLine);
    return child;
  }
}

/** One lifecycle event: `event 'lifecycle' for domain 'NAME': Stopped Destroyed`. */
export interface LifecycleEvent {
  domain: string;
  /** Started, Suspended, Resumed, Stopped, Shutdown, ... */
  event: string;
  /** Booted, Paused, Shutdown, Destroyed, Failed, Crashed, ... */
  detail: string;
}

export function parseLifecycleLine(line: string): LifecycleEvent | undefined {
  const m = /^event 'lifecycle' for domain '(.*)': (\S+) (\S+)$/.exec(line.trim());
  if (!m) return undefined;
  return { domain: m[1]!, event: m[2]!, detail: m[3]! };
}

/**
 * A shared `virsh event` stream: subscribers wait for a named domain's `Stopped` event. The
 * child runs only while someone listens (a host agent with no running VM keeps no process), and
 * is restarted if it dies (libvirtd restarted) while someone does.
 */
export class LifecycleEvents {
  readonly #virsh: Virsh;
  readonly #listeners = new Map<string, Set<(e: LifecycleEvent) => void>>();
  #child: ChildProcess | undefined;

  constructor(virsh: Virsh) {
    this.#virsh = virsh;
  }

  /** Calls `fn` for each event of `domain` until the returned function is called. */
  subscribe(domain: string, fn: (e: LifecycleEvent) => void): () => void {
    const set = this.#listeners.get(domain) ?? new Set();
    this.#listeners.set(domain, set);
    set.add(fn);
    this.#ensure();
    return () => {
      set.delete(fn);
      if (set.size === 0) this.#listeners.delete(domain);
      if (this.#listeners.size === 0) this.close();
    };
  }

  close(): void {
    const child = this.#child;
    this.#child = undefined;
    child?.removeAllListeners('exit');
    child?.kill('SIGTERM');
  }

  #ensure(): void {
    if (this.#child) return;
    const child = this.#virsh.events((line) => {
      const e = parseLifecycleLine(line);
      if (!e) return;
      for (const fn of [...(this.#listeners.get(e.domain) ?? [])]) fn(e);
    });
    child.on('error', () => {});
    child.once('exit', () => {
      if (this.#child !== child) return;
      this.#child = undefined;
      // Events missed while it was down are covered by the pid watch in the driver.
      if (this.#listeners.size > 0)
        setTimeout(() => this.#listeners.size > 0 && this.#ensure(), 1_000).unref();
    });
    this.#child = child;
  }
}
