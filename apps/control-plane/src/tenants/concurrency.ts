import { WarrenError } from '@warren/protocol';

/** What is counted: exec streams, and dashboard requests in flight plus open WebSocket tunnels. */
export type StreamKind = 'exec' | 'dashboard';

const SETTING: Record<StreamKind, string> = {
  exec: 'WARREN_TENANT_MAX_EXECS',
  dashboard: 'WARREN_TENANT_MAX_DASHBOARD_STREAMS',
};

/**
 * Per-tenant caps on the long-lived streams the control plane proxies to a tenant's VM, so
 * one tenant cannot hold all of the control plane's (and its hosts') sockets and memory. A
 * stream is counted from `acquire` until its release function is called (once; later calls
 * do nothing). In memory, per control-plane process.
 */
export class TenantStreams {
  readonly #limits: Record<StreamKind, number>;
  readonly #open = new Map<string, number>();

  constructor(limits: Record<StreamKind, number>) {
    this.#limits = limits;
  }

  /**
   * Counts one stream of `kind` for the tenant until `until` (the reply, or a tunnel's socket)
   * closes, however that happens; throws TOO_MANY_STREAMS at the cap. A stream that closed
   * before this call (its client left while the route was awaiting) is not counted.
   */
  hold(
    tenant: { id: string; name: string },
    kind: StreamKind,
    until: { readonly closed: boolean; once(event: 'close', f: () => void): unknown },
  ): void {
    const release = this.acquire(tenant, kind);
    if (until.closed) release();
    else until.once('close', release);
  }

  /** Counts one stream of `kind` for the tenant, or throws TOO_MANY_STREAMS at its cap. */
  acquire(tenant: { id: string; name: string }, kind: StreamKind): () => void {
    const key = `${kind}:${tenant.id}`;
    const n = this.#open.get(key) ?? 0;
    const limit = this.#limits[kind];
    if (n >= limit) {
      throw new WarrenError(
        'TOO_MANY_STREAMS',
        `tenant ${tenant.name} has ${n} ${kind} streams open, its limit (${SETTING[kind]} = ${limit}); wait for one to end`,
        { details: { kind, limit } },
      );
    }
    this.#open.set(key, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#open.get(key) ?? 1) - 1;
      if (left > 0) this.#open.set(key, left);
      else this.#open.delete(key);
    };
  }
}

/**
 * One snapshot, session, backup or restore step (snapshot create, revert, delete; session
 * start, end, expiry; a backup's start; a restore job from start to end) per tenant at a time, so an end's revert cannot interleave with another revert or a new
 * snapshot of the same VM. A second caller is refused at once (CONFLICT) rather than queued:
 * these steps take seconds, and a queue would hold one connection per waiting client. In
 * memory, per control-plane process, like TenantStreams.
 */
export class TenantLocks {
  readonly #held = new Map<string, string>();

  /** Runs `step` holding the tenant's lock; CONFLICT naming what holds it when busy. */
  async with<T>(tenant: { id: string; name: string }, what: string, step: () => Promise<T>): Promise<T> {
    const release = this.hold(tenant, what);
    try {
      return await step();
    } finally {
      release();
    }
  }

  /**
   * Takes the tenant's lock until the returned function is called (once; later calls do
   * nothing), for work that outlives the request that started it (a backup or restore job);
   * CONFLICT naming what holds it when busy.
   */
  hold(tenant: { id: string; name: string }, what: string): () => void {
    const holder = this.#held.get(tenant.id);
    if (holder !== undefined) {
      throw new WarrenError(
        'CONFLICT',
        `tenant ${tenant.name} is busy with a ${holder}; retry when it has finished`,
        { details: { busyWith: holder } },
      );
    }
    this.#held.set(tenant.id, what);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#held.delete(tenant.id);
    };
  }

  /** Whether a step holds the tenant now (the expiry sweep skips such a tenant until its next pass). */
  busy(tenantId: string): boolean {
    return this.#held.has(tenantId);
  }
}
