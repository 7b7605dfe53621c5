/**
 * Idle reclamation: which tenant VMs are in use, which have been idle past their timeout (the
 * control plane's per-tenant `idleTimeoutMs`, handed over by the reconciler), and making room
 * in the host's memory before a start or wake by suspending the least recently used idle-
 * eligible VM. The suspend and wake themselves are VmManager's (`suspend`, `start`).
 */
import { tenantIdOfVm } from '@warren/protocol';

/** What the reclaimer needs of the VM manager. */
export interface IdleVms {
  list(): Promise<{ id: string; state: string; memoryMiB: number }[]>;
  /** Suspends the VM unless `busy()`, asked again under the VM's lock, says it is in use now. */
  suspend(id: string, options: { unless: () => boolean; why: string }): Promise<{ state: string }>;
  readonly canSuspend: boolean;
}

export interface IdleOptions {
  /** WARREN_IDLE_CHECK_MS. */
  checkMs: number;
  /** Guest memory running VMs may hold together (WARREN_CAPACITY_MEMORY_MIB); unlimited when absent. */
  capacityMemoryMiB?: number;
  log?: (message: string) => void;
}

/** States in which a VM holds (or is about to hold) its memory. */
const HOLDS_MEMORY = new Set(['running', 'starting', 'stopping']);

export class IdleReclaimer {
  readonly #vms: IdleVms;
  readonly #o: IdleOptions;
  /** Last use of each VM (ms since the epoch); a VM not seen yet counts as used when first seen. */
  readonly #last = new Map<string, number>();
  /** Requests, streams and tunnels open to each VM: never idle while one is. */
  readonly #open = new Map<string, number>();
  /** Idle timeouts of tenant VMs, from the desired list; absent or null: never suspended. */
  #timeouts = new Map<string, number | null>();
  #timer: NodeJS.Timeout | undefined;
  #checking: Promise<void> | undefined;
  /** Making room is one caller at a time, so two starts do not both count the same free memory. */
  #room: Promise<unknown> = Promise.resolve();

  constructor(vms: IdleVms, options: IdleOptions) {
    this.#vms = vms;
    this.#o = options;
  }

  /** Starts the check loop (with a VMM that cannot suspend it only forgets VMs that are gone). */
  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      this.#checking ??= this.check().finally(() => {
        this.#checking = undefined;
      });
    }, this.#o.checkMs);
    this.#timer.unref();
  }

  close(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  touch(id: string): void {
    this.#last.set(id, Date.now());
  }

  /** Marks a request, stream or tunnel open to the VM until the returned function is called. */
  hold(id: string): () => void {
    this.#open.set(id, (this.#open.get(id) ?? 0) + 1);
    this.touch(id);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#open.get(id) ?? 1) - 1;
      if (left > 0) this.#open.set(id, left);
      else this.#open.delete(id);
      this.touch(id);
    };
  }

  /** Replaces every tenant VM's idle timeout (ms, null: never) with the desired list's. */
  setTimeouts(timeouts: Map<string, number | null>): void {
    this.#timeouts = timeouts;
  }

  /** ms the VM has been unused, or 0 while something is open to it. */
  idleMs(id: string, now = Date.now()): number {
    if ((this.#open.get(id) ?? 0) > 0) return 0;
    const last = this.#last.get(id);
    if (last === undefined) {
      this.#last.set(id, now);
      return 0;
    }
    return now - last;
  }

  /** A tenant VM with an idle timeout and nothing open to it: one the host may suspend. */
  #eligible(id: string): boolean {
    return (
      tenantIdOfVm(id) !== undefined && typeof this.#timeouts.get(id) === 'number' && !this.#open.get(id)
    );
  }

  #idlePast(id: string): boolean {
    const timeout = this.#timeouts.get(id);
    return this.#eligible(id) && typeof timeout === 'number' && this.idleMs(id) >= timeout;
  }

  /**
   * Suspends every running VM idle past its timeout; one at a time, so a check never floods the
   * disk. First forgets the use of VMs that do not exist: requests naming made-up VM ids (the
   * remote API touches before it knows) must not grow this agent's memory.
   */
  async check(): Promise<void> {
    const vms = await this.#vms.list().catch(() => undefined);
    if (!vms) return;
    const ids = new Set(vms.map((v) => v.id));
    for (const id of this.#last.keys()) if (!ids.has(id) && !this.#open.has(id)) this.#last.delete(id);
    if (!this.#vms.canSuspend) return;
    for (const vm of vms) {
      if (vm.state !== 'running' || !this.#idlePast(vm.id)) continue;
      await this.#vms
        .suspend(vm.id, {
          unless: () => !this.#idlePast(vm.id),
          why: `idle for ${Math.round(this.idleMs(vm.id) / 1000)} s (timeout ${this.#timeouts.get(vm.id)} ms)`,
        })
        .catch((e: Error) => this.#o.log?.(`VM ${vm.id}: suspending it while idle failed: ${e.message}`));
    }
  }

  /**
   * Before VM `id` starts or wakes: while the VMs holding memory and this one would exceed the
   * host's memory capacity, suspends the least recently used idle-eligible running VM. With none
   * left to suspend the start goes ahead (the control plane's placement is the hard limit).
   */
  makeRoom(id: string, memoryMiB: number): Promise<void> {
    const capacity = this.#o.capacityMemoryMiB;
    if (capacity === undefined || !this.#vms.canSuspend) return Promise.resolve();
    const run = this.#room.then(async () => {
      const vms = (await this.#vms.list()).filter((v) => v.id !== id && HOLDS_MEMORY.has(v.state));
      let used = vms.reduce((n, v) => n + v.memoryMiB, 0);
      const candidates = vms
        .filter((v) => v.state === 'running' && this.#eligible(v.id))
        .sort((a, b) => (this.#last.get(a.id) ?? 0) - (this.#last.get(b.id) ?? 0));
      for (const vm of candidates) {
        if (used + memoryMiB <= capacity) return;
        try {
          const after = await this.#vms.suspend(vm.id, {
            unless: () => !this.#eligible(vm.id),
            why: `making room for ${id} (${used + memoryMiB} of ${capacity} MiB)`,
          });
          if (after.state === 'suspended') used -= vm.memoryMiB;
        } catch (e) {
          this.#o.log?.(`VM ${vm.id}: suspending it to make room for ${id} failed: ${(e as Error).message}`);
        }
      }
      if (used + memoryMiB > capacity)
        this.#o.log?.(
          `VM ${id}: starting with ${used + memoryMiB} MiB of ${capacity} MiB in use; no idle VM left to suspend`,
        );
    });
    this.#room = run.catch(() => {});
    return run;
  }
}
