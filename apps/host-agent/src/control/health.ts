import type { ErrorSummary } from '@warren/protocol';
import type { Probe } from '../vm/vm-manager.ts';

export interface HealthSettings {
  /** WARREN_HEALTH_INTERVAL_MS: time between two checks of one VM. */
  intervalMs: number;
  /** WARREN_HEALTH_TIMEOUT_MS: how long one check waits for the guest agent's answer. */
  timeoutMs: number;
  /** WARREN_HEALTH_FAILURES: consecutive failed checks that make a VM unhealthy. */
  failures: number;
  /** WARREN_HEALTH_GRACE_MS: how long a VM stays unhealthy before it is restarted. */
  graceMs: number;
}

/** What the checks know about one running VM (one VMM process: a new pid starts afresh). */
interface Checked {
  pid: number;
  failures: number;
  firstFailureAt: number;
  reason: string;
  /** When the failures reached the limit; the grace runs from here. */
  unhealthyAt?: number;
}

export interface Unhealthy {
  since: number;
  error: ErrorSummary;
}

/**
 * Health checks of running VMs' guest agents. It only keeps count and says which VMs are
 * unhealthy; the reconciler reports them and restarts them (it owns lifecycle and backoff).
 */
export class GuestHealth {
  readonly settings: HealthSettings;
  readonly #checked = new Map<string, Checked>();
  readonly #log: (message: string) => void;
  readonly #consoleLog: (id: string) => string;

  constructor(settings: HealthSettings, consoleLog: (id: string) => string, log: (message: string) => void) {
    this.settings = settings;
    this.#consoleLog = consoleLog;
    this.#log = log;
  }

  /**
   * Checks each VM (`probe` is VmManager.probe) at once and forgets VMs no longer checked.
   * Returns true when a VM became unhealthy or healthy again (the heartbeat should say so).
   */
  async check(ids: string[], probe: (id: string, timeoutMs: number) => Promise<Probe>): Promise<boolean> {
    for (const id of this.#checked.keys()) if (!ids.includes(id)) this.#checked.delete(id);
    const changed = await Promise.all(
      ids.map(async (id) => this.#record(id, await probe(id, this.settings.timeoutMs))),
    );
    return changed.some(Boolean);
  }

  #record(id: string, probe: Probe): boolean {
    if (probe.state === 'busy') return false;
    const now = Date.now();
    let c = this.#checked.get(id);
    if (!c || c.pid !== probe.pid) {
      c = { pid: probe.pid, failures: 0, firstFailureAt: 0, reason: '' };
      this.#checked.set(id, c);
    }
    if (probe.state === 'ok') {
      // The probe knows the agent that answered when the VM got ready, so a restart inside the
      // guest before the first check is named too.
      const restarted = probe.restarted;
      if (c.failures > 0 || restarted) {
        this.#log(
          `VM ${id}: guest agent answers again${c.failures ? ` after ${c.failures} failed health checks` : ''}${
            restarted ? ' (it was restarted inside the guest)' : ''
          }${c.unhealthyAt ? ': healthy, no restart needed' : ''}`,
        );
      }
      const was = c.unhealthyAt !== undefined;
      Object.assign(c, { failures: 0, firstFailureAt: 0, reason: '', unhealthyAt: undefined });
      return was;
    }
    if (c.failures === 0) {
      c.firstFailureAt = now;
      this.#log(`VM ${id}: guest agent did not answer a health check: ${probe.failure}`);
    }
    c.failures++;
    c.reason = probe.failure;
    if (c.failures >= this.settings.failures && c.unhealthyAt === undefined) {
      c.unhealthyAt = now;
      this.#log(
        `VM ${id}: unhealthy: ${this.#describe(id, c, now)}; restarting it in ${this.settings.graceMs} ms unless it answers`,
      );
      return true;
    }
    return false;
  }

  #describe(id: string, c: Checked, now: number): string {
    const secs = Math.max(1, Math.round((now - c.firstFailureAt) / 1000));
    return `no answer from its guest agent for ${secs} s (${c.failures} checks; last: ${c.reason}); see ${this.#consoleLog(id)}`;
  }

  /** The VM's unhealthy state, when its current VMM (`pid`) failed enough checks in a row. */
  unhealthy(id: string, pid: number | undefined): Unhealthy | undefined {
    const c = this.#checked.get(id);
    if (!c || c.pid !== pid || c.unhealthyAt === undefined) return undefined;
    return {
      since: c.unhealthyAt,
      error: { code: 'GUEST_UNHEALTHY', message: this.#describe(id, c, Date.now()).slice(0, 4096) },
    };
  }

  /** Forgets a VM (restarted, stopped, destroyed): its next VMM starts with a clean count. */
  forget(id: string): void {
    this.#checked.delete(id);
  }
}
