import type { ImageStore } from '@warren/images';
import {
  type CgroupState,
  type DesiredState,
  type DesiredTenant,
  type ErrorSummary,
  type HeartbeatRequest,
  type HeartbeatResponse,
  NetworkPolicy,
  type QuarantinedVm,
  type ReportedVm,
  type Resources,
  tenantIdOfVm,
  vmIdOfTenant,
  WarrenError,
} from '@warren/protocol';
import type { VmManager, VmStatus } from '../vm/vm-manager.ts';
import type { ControlPlaneClient } from './client.ts';
import { type Credentials, saveCredentials } from './credentials.ts';
import { GuestHealth, type HealthSettings } from './health.ts';

export interface ReconcilerOptions {
  vms: VmManager;
  store: ImageStore;
  client: ControlPlaneClient;
  controlPlaneUrl: string;
  /** Where credentials are saved after a join. */
  dataDir: string;
  hostName: string;
  /** Base URL of this agent's remote API, sent with the join and every heartbeat. */
  address: string;
  agentToken: string;
  agentVersion: string;
  capacity: Resources;
  /** Reported with every heartbeat, so `warren host list` shows hosts that run without limits. */
  cgroups?: CgroupState;
  /** The VMM driver (WARREN_VMM), reported with every heartbeat and shown by `warren host list`. */
  vmm?: string;
  /** Needed to join, and to join again when the control plane forgot this host's token. */
  joinToken?: string;
  /** Saved credentials for `controlPlaneUrl`, when this host joined before. */
  credentials?: Credentials;
  /** The operator's WARREN_HEARTBEAT_MS; the interval the control plane suggests is not used. */
  heartbeatMs: number;
  /** First wait before retrying a failed converge or restarting a crashed VM; doubles up to retryMaxMs. */
  retryInitialMs?: number;
  retryMaxMs?: number;
  /** Health checks of running tenant VMs' guest agents; none without. */
  health?: HealthSettings;
  /** WARREN_START_MAX_ATTEMPTS: failed creates or starts of one generation before the agent gives up. */
  startMaxAttempts?: number;
  /** WARREN_QUARANTINE_MS: how long an orphan tenant VM is kept stopped before it is destroyed. */
  quarantineMs?: number;
  log?: (message: string) => void;
  /** Told the error code of every failed reconcile step (create, start, stop, destroy, …): metrics. */
  onTaskError?: (code: string) => void;
}

type Step = 'create' | 'start' | 'stop' | 'destroy' | 'network' | 'restart' | 'unquarantine' | 'skills';
type Phase = 'provisioning' | 'starting' | 'stopping';

/** What the reconciler knows about one tenant VM beyond what VmManager has on disk. */
interface Track {
  vmId: string;
  tenantId: string;
  /** The desired generation last acted on; 0 until a converge pass ran in this process. */
  generation: number;
  error: ErrorSummary | null;
  /** Set while a converge task runs: at most one per tenant. */
  task?: Promise<void>;
  phase?: Phase;
  /** No new attempt before this time (after a failure, or a crash of a VM meant to run). */
  retryAt: number;
  retryMs: number;
  lastActionAt: number;
  /** Failed creates or starts at this generation; at startMaxAttempts the agent gives up (retryAt Infinity). */
  attempts: number;
  /** The tenant's name, for the message that says how to try again. */
  name?: string;
  /** Set while the task quarantines or removes an orphan: it is no tenant VM of the control plane's. */
  orphan?: boolean;
  /**
   * Added to the health grace before the next restart of an unhealthy VM: 0, then the retry
   * backoff doubling after each restart, back to 0 once the VM has run well for STABLE_MS.
   */
  restartDelayMs: number;
}

/** Steps whose failure counts as a failed start (reported as attempts, given up on at the limit). */
const STARTING_STEPS: ReadonlySet<Step> = new Set(['create', 'start', 'restart']);

/** A VM that has run this long since the last action counts as healthy again: backoff resets. */
const STABLE_MS = 60_000;

/**
 * Converges this host's tenant VMs to the control plane's desired state.
 *
 * One loop heartbeats (join first if needed): it reports capacity, images and every tenant
 * VM, and gets back the complete desired list. Each tenant that differs gets a task (at most
 * one in flight per tenant) so the loop never waits for a boot. Anything the agent knows
 * only in memory (generations, errors, backoff) can be lost on restart: the next pass
 * rebuilds it from the VMs on disk and the desired list, which is what makes restarts safe.
 */
export class Reconciler {
  readonly #o: ReconcilerOptions;
  readonly #retryInitialMs: number;
  readonly #retryMaxMs: number;
  readonly #tracks = new Map<string, Track>();
  #credentials: Credentials | undefined;
  #loop: Promise<void> | undefined;
  #stopped = false;
  #woken = false;
  #wakeSleep: (() => void) | undefined;
  /** Consecutive failed heartbeats, and the error code of the streak's last log line. */
  #streak = 0;
  #streakCode: string | undefined;
  readonly #onExit = () => this.wake();
  readonly #health: GuestHealth | undefined;
  #healthLoop: Promise<void> | undefined;
  #healthSleep: (() => void) | undefined;
  readonly #startMaxAttempts: number;
  readonly #quarantineMs: number;
  /** Each tenant VM's secrets generation the agent holds (handed to VmManager.setSecrets). */
  readonly #secretsHeld = new Map<string, number>();
  /** Secrets fetches in flight, one per VM; a start waits for its VM's. */
  readonly #secretsSync = new Map<string, Promise<void>>();

  constructor(options: ReconcilerOptions) {
    this.#o = options;
    this.#retryInitialMs = options.retryInitialMs ?? 5_000;
    this.#retryMaxMs = options.retryMaxMs ?? 300_000;
    this.#credentials = options.credentials;
    this.#startMaxAttempts = options.startMaxAttempts ?? 5;
    this.#quarantineMs = options.quarantineMs ?? 7 * 24 * 3600_000;
    this.#health = options.health
      ? new GuestHealth(options.health, (id) => options.vms.consoleLog(id), options.log ?? (() => {}))
      : undefined;
    // Skill bundles come from the control plane this agent joined, with its host token. (`?.`:
    // tests drive the reconciler with a stand-in VM manager that has none.)
    options.vms.skills?.setFetcher((digest, maxBytes) => {
      const token = this.#credentials?.token;
      if (!token)
        return Promise.reject(new WarrenError('API_UNREACHABLE', 'not joined to a control plane yet'));
      return this.#o.client.skillBundle(token, digest, maxBytes);
    });
  }

  /** The host id once joined. */
  get hostId(): string | undefined {
    return this.#credentials?.hostId;
  }

  start(): void {
    if (this.#loop) return;
    this.#o.vms.on('exit', this.#onExit);
    this.#loop = this.#run();
    if (this.#health) this.#healthLoop = this.#runHealth(this.#health);
  }

  /** Heartbeat now instead of at the end of the interval (desired state changed, a task ended). */
  wake(): void {
    this.#woken = true;
    this.#wakeSleep?.();
  }

  /**
   * Ends the heartbeat loop. VMs are left as they are; with `waitForTasks` the running
   * converge tasks are awaited too (tests), otherwise they are abandoned to the process exit
   * and the next agent's first pass picks up where they stopped.
   */
  async stop({ waitForTasks = true }: { waitForTasks?: boolean } = {}): Promise<void> {
    this.#stopped = true;
    this.#o.vms.off('exit', this.#onExit);
    this.wake();
    this.#healthSleep?.();
    await Promise.all([this.#loop, this.#healthLoop]);
    if (waitForTasks) await Promise.allSettled([...this.#tracks.values()].map((t) => t.task));
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      this.#woken = false;
      let delay = this.#o.heartbeatMs;
      try {
        await this.#beat();
        if (this.#streak > 0) this.#o.log?.('control plane: heartbeats succeed again');
        this.#streak = 0;
        this.#streakCode = undefined;
      } catch (e) {
        delay = this.#failed(e);
      }
      if (this.#stopped || this.#woken) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.#wakeSleep = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wakeSleep = undefined;
    }
  }

  /**
   * Checks the guest agent of every running tenant VM each interval. A VM that became
   * unhealthy (or healthy again) is reported at once; the restart is the converge pass's.
   */
  async #runHealth(health: GuestHealth): Promise<void> {
    while (!this.#stopped) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, health.settings.intervalMs);
        this.#healthSleep = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#healthSleep = undefined;
      if (this.#stopped) break;
      try {
        const running = [...(await this.#tenantVms()).values()]
          .filter((vm) => vm.state === 'running' && !vm.quarantine && !this.#tracks.get(vm.id)?.task)
          .map((vm) => vm.id);
        if (await health.check(running, (id, ms) => this.#o.vms.probe(id, ms))) this.wake();
      } catch (e) {
        this.#o.log?.(`health checks: ${(e as Error).message}`);
      }
    }
  }

  /** Logs once per failure streak (and when the reason changes); returns the wait before the next try. */
  #failed(e: unknown): number {
    const err = e instanceof WarrenError ? e : new WarrenError('INTERNAL', String((e as Error)?.stack ?? e));
    this.#streak++;
    if (err.code !== this.#streakCode) {
      this.#o.log?.(`control plane: ${err.code}: ${err.message}; VMs stay as they are, retrying`);
      this.#streakCode = err.code;
    }
    // Unreachable is cheap to retry and usually short (a restart); refusals need a person.
    if (err.code === 'API_UNREACHABLE') return this.#o.heartbeatMs;
    return Math.min(this.#o.heartbeatMs * 2 ** Math.min(this.#streak, 20), this.#retryMaxMs);
  }

  async #beat(): Promise<void> {
    const credentials = this.#credentials ?? (await this.#join());
    const request = await this.#report();
    let response: HeartbeatResponse;
    try {
      response = await this.#o.client.heartbeat(credentials.token, request);
    } catch (e) {
      if (!(e instanceof WarrenError && e.code === 'UNAUTHENTICATED')) throw e;
      if (!this.#o.joinToken) {
        throw new WarrenError(
          'UNAUTHENTICATED',
          `the control plane refused host ${credentials.hostId}'s token and there is no join token to join again: set WARREN_JOIN_TOKEN or WARREN_JOIN_TOKEN_FILE`,
        );
      }
      this.#o.log?.(`control plane refused host ${credentials.hostId}'s token: joining again`);
      const fresh = await this.#join();
      response = await this.#o.client.heartbeat(fresh.token, request);
    }
    await this.#converge(response);
  }

  async #join(): Promise<Credentials> {
    if (!this.#o.joinToken) {
      throw new WarrenError(
        'UNAUTHENTICATED',
        `not joined to ${this.#o.controlPlaneUrl} and no join token: set WARREN_JOIN_TOKEN or WARREN_JOIN_TOKEN_FILE`,
      );
    }
    // Joining again under a name that exists needs this host's token (or a re-join token as
    // the join token): send the one we hold, if any.
    const joined = await this.#o.client.join(this.#o.joinToken, {
      name: this.#o.hostName,
      address: this.#o.address,
      agentToken: this.#o.agentToken,
      agentVersion: this.#o.agentVersion,
      capacity: this.#o.capacity,
      ...(this.#credentials ? { hostToken: this.#credentials.token } : {}),
    });
    const credentials: Credentials = {
      controlPlaneUrl: this.#o.controlPlaneUrl,
      hostId: joined.hostId,
      token: joined.token,
      agentToken: this.#o.agentToken,
    };
    await saveCredentials(this.#o.dataDir, credentials);
    this.#credentials = credentials;
    this.#o.log?.(`joined ${this.#o.controlPlaneUrl} as ${this.#o.hostName} (${joined.hostId})`);
    return credentials;
  }

  async #report(): Promise<HeartbeatRequest> {
    const onDisk = await this.#tenantVms();
    const ids = new Set([...onDisk.keys(), ...this.#tracks.keys()]);
    const vms: ReportedVm[] = [];
    const quarantined: QuarantinedVm[] = [];
    for (const vmId of [...ids].sort()) {
      const track = this.#tracks.get(vmId);
      const vm = onDisk.get(vmId);
      if (track?.orphan && !vm?.quarantine) continue;
      if (vm?.quarantine && (!track?.task || track.orphan)) {
        quarantined.push({
          vmId,
          tenantId: tenantIdOfVm(vmId)!,
          imageId: vm.imageId,
          vcpus: vm.cpus,
          memoryMiB: vm.memoryMiB,
          diskMiB: vm.diskMiB,
          quarantinedAt: vm.quarantine.at,
          removeAfter: vm.quarantine.removeAfter,
        });
        continue;
      }
      let state = stateOf(track, vm);
      if (!state) continue;
      let error = track?.error ?? null;
      const sick = state === 'running' ? this.#health?.unhealthy(vmId, vm?.pid) : undefined;
      if (sick) {
        state = 'unhealthy';
        error = sick.error;
      }
      vms.push({
        tenantId: tenantIdOfVm(vmId)!,
        state,
        generation: track?.generation ?? 0,
        error,
        ...(track && track.attempts > 0
          ? {
              attempts: {
                count: track.attempts,
                nextAttemptAt: Number.isFinite(track.retryAt) ? new Date(track.retryAt).toISOString() : null,
              },
            }
          : {}),
      });
    }
    const images = (await this.#o.store.list()).map((i) => ({
      id: i.id,
      profile: i.profile,
      createdAt: i.createdAt,
    }));
    return {
      address: this.#o.address,
      agentVersion: this.#o.agentVersion,
      capacity: this.#o.capacity,
      health: 'ok',
      ...(this.#o.cgroups ? { cgroups: this.#o.cgroups } : {}),
      ...(this.#o.vmm ? { vmm: this.#o.vmm } : {}),
      images,
      vms,
      quarantined,
    };
  }

  async #converge(response: HeartbeatResponse): Promise<void> {
    const onDisk = await this.#tenantVms();
    const wanted = new Set<string>();
    this.#o.vms.idle.setTimeouts(idleTimeoutsOf(response.tenants));
    for (const t of response.tenants) {
      // The VM id is derived here, never taken from the wire: a control plane cannot name a
      // VM outside the tenant namespace (or a path).
      const vmId = vmIdOfTenant(t.tenantId);
      if (t.vmId !== vmId || !tenantIdOfVm(vmId)) {
        this.#o.log?.(
          `ignoring desired tenant ${t.tenantId}: its VM id ${JSON.stringify(t.vmId)} is not ${vmId}`,
        );
        continue;
      }
      wanted.add(vmId);
      if (t.desiredState !== 'absent') this.#syncSecrets(vmId, t);
      this.#consider(vmId, t.desiredState, t.generation, onDisk.get(vmId), t);
    }
    // Only after a successful heartbeat: an error must never read as "nothing is wanted".
    // Even then an unlisted VM is not destroyed: the list may come from a restored old
    // database or a fresh control plane, so it is only stopped and kept (quarantined).
    for (const [vmId, vm] of onDisk) if (!wanted.has(vmId)) this.#orphan(vmId, vm);
    for (const vmId of this.#secretsHeld.keys())
      if (!wanted.has(vmId)) {
        this.#secretsHeld.delete(vmId);
        this.#o.vms.forgetSecrets(vmId);
      }
    for (const [vmId, track] of this.#tracks) {
      if (!track.task && !onDisk.has(vmId) && (!wanted.has(vmId) || !track.error)) this.#tracks.delete(vmId);
    }
  }

  /**
   * Gets the tenant's secrets when the desired list's generation differs from the one held.
   * They are fetched apart from the heartbeat (`POST /v1/agent/secrets`, the same host token)
   * rather than carried in the desired list: every heartbeat would otherwise carry (and the
   * control plane decrypt) every tenant's values, while this sends them only when they changed,
   * and only for a tenant placed on this host. Values go to VmManager's memory, never to a file
   * or a log line; a failure is logged by code and retried at the next heartbeat.
   */
  #syncSecrets(vmId: string, t: DesiredTenant): void {
    if (this.#secretsSync.has(vmId) || this.#secretsHeld.get(vmId) === t.secretsGeneration) return;
    const run = (async () => {
      let files: Record<string, string> = {};
      let generation = 0;
      if (t.secretsGeneration > 0) {
        const token = this.#credentials?.token;
        if (!token) return;
        const got = await this.#o.client.secrets(token, t.tenantId);
        generation = got.generation;
        files = Object.fromEntries(got.secrets.map((x) => [x.name, x.value]));
      }
      // Held before the delivery ends: a newer generation meanwhile starts its own fetch.
      this.#secretsHeld.set(vmId, generation);
      await this.#o.vms.setSecrets(vmId, files);
    })()
      .catch((e) => {
        this.#secretsHeld.delete(vmId);
        // The message names codes and fields, never a value (zod's messages do not repeat input).
        this.#o.log?.(`VM ${vmId}: fetching its secrets failed: ${(e as Error).message}; trying again`);
      })
      .finally(() => this.#secretsSync.delete(vmId));
    this.#secretsSync.set(vmId, run);
  }

  /**
   * A tenant VM the desired list does not name: stopped and marked quarantined (kept for
   * quarantineMs), and destroyed only once that time is up, unless it is listed again first.
   */
  #orphan(vmId: string, vm: VmStatus): void {
    const track = this.#trackOf(vmId);
    if (track.task) return;
    if (vm.state === 'starting' || vm.state === 'stopping') return;
    const now = Date.now();
    if (!vm.quarantine) {
      this.#o.log?.(
        `VM ${vmId} is not in the control plane's desired list: stopping it and keeping it, quarantined, for ${this.#quarantineMs} ms`,
      );
      this.#run1(track, ['quarantine'], async () => {
        this.#health?.forget(vmId);
        const { quarantine } = await this.#o.vms.quarantine(vmId, this.#quarantineMs);
        this.#o.log?.(`VM ${vmId} is quarantined until ${quarantine?.removeAfter}`);
      });
    } else if (Date.parse(vm.quarantine.removeAfter) <= now) {
      this.#o.log?.(
        `destroying VM ${vmId}: quarantined since ${vm.quarantine.at} and not adopted before ${vm.quarantine.removeAfter}`,
      );
      this.#run1(track, ['destroy'], () => this.#o.vms.destroy(vmId));
    }
  }

  /** Runs one orphan task; a failure is logged and the next converge pass tries again. */
  #run1(track: Track, what: string[], fn: () => Promise<unknown>): void {
    track.phase = 'stopping';
    track.orphan = true;
    track.task = fn()
      .then(
        () => {},
        (e) =>
          this.#o.log?.(`VM ${track.vmId}: ${what.join('+')} failed: ${(e as Error).message}; trying again`),
      )
      .finally(() => {
        track.task = undefined;
        track.phase = undefined;
        track.orphan = false;
        this.wake();
      });
  }

  #consider(vmId: string, want: DesiredState, generation: number, vm?: VmStatus, spec?: DesiredTenant): void {
    const track = this.#trackOf(vmId);
    if (track.task) return;
    if (spec) track.name = spec.name;
    const now = Date.now();
    if (generation !== track.generation) {
      // New desired state: act on it now, whatever the backoff of the old one was.
      track.retryAt = 0;
      track.retryMs = this.#retryInitialMs;
      track.attempts = 0;
    }
    let steps = stepsTo(want, vm);
    if (steps === 'wait') return;
    if (wakesSuspended(want, vm, track.generation, generation)) steps = ['start'];
    // Listed again (an admin adopted it): out of quarantine, then on to its desired state.
    // An explicit delete (absent) destroys it as any other VM.
    if (vm?.quarantine && want !== 'absent') {
      steps = ['unquarantine', ...steps];
    }
    if (steps.length === 0 && want === 'running' && vm?.state === 'running') {
      const sick = this.#health?.unhealthy(vmId, vm.pid);
      if (sick) {
        if (now < sick.since + (this.#health?.settings.graceMs ?? 0) + track.restartDelayMs) {
          track.generation = generation;
          return;
        }
        this.#o.log?.(
          `VM ${vmId}: restarting it${track.restartDelayMs ? ` (restarted before; backoff ${track.restartDelayMs} ms)` : ''}: ${sick.error.message}`,
        );
        // A guest that goes unhealthy again soon after is given longer each time.
        track.restartDelayMs = Math.min(
          Math.max(this.#retryInitialMs, track.restartDelayMs * 2),
          this.#retryMaxMs,
        );
        steps = ['restart'];
      }
    }
    if (spec && want !== 'absent') this.#o.vms.setConfig(vmId, spec.config);
    // A channel set to apply at once: a running VM whose attached packages differ restarts.
    if (
      steps.length === 0 &&
      spec &&
      want === 'running' &&
      vm?.state === 'running' &&
      spec.skills.some((s) => s.applyNow) &&
      !sameSkills(vm.attachedSkills ?? [], spec.skills)
    ) {
      this.#o.log?.(
        `VM ${vmId}: its skill packages changed on a channel that applies at once: restarting it`,
      );
      steps = ['skills', 'stop', 'start'];
    }
    // Not tied to a generation: a policy change needs no lifecycle step and applies to a running VM.
    if (
      vm &&
      spec &&
      want !== 'absent' &&
      this.#o.vms.networkEnabled &&
      !samePolicy(vm.networkPolicy, spec.network)
    ) {
      steps = ['network', ...steps];
    }
    if (steps.length === 0) {
      track.generation = generation;
      track.error = null;
      track.retryAt = 0;
      if (now - track.lastActionAt >= STABLE_MS) {
        track.retryMs = this.#retryInitialMs;
        track.restartDelayMs = 0;
      }
      return;
    }
    if (now < track.retryAt) return;
    if (vm?.state === 'crashed' && want === 'running' && track.retryAt === 0 && !track.error) {
      // The backoff belongs to this generation: without recording it, the next pass (the first
      // ones after an agent restart, whose generation is still 0 here) would see a "new"
      // generation, clear the backoff and log again, every heartbeat, never restarting the VM.
      track.generation = generation;
      track.retryAt = now + track.retryMs;
      this.#o.log?.(`VM ${vmId} crashed (${vm.lastExit?.reason}): restarting in ${track.retryMs} ms`);
      track.retryMs = Math.min(track.retryMs * 2, this.#retryMaxMs);
      return;
    }
    track.generation = generation;
    track.lastActionAt = now;
    track.task = this.#act(track, steps, spec).finally(() => {
      track.task = undefined;
      track.phase = undefined;
      this.wake();
    });
  }

  async #act(track: Track, steps: Step[], spec?: DesiredTenant): Promise<void> {
    const { vms } = this.#o;
    // A VM about to start gets its secrets at start: wait for a fetch in flight.
    await this.#secretsSync.get(track.vmId);
    try {
      for (const step of steps) {
        if (step === 'create') {
          if (!spec) throw new WarrenError('INTERNAL', `no desired spec to create VM ${track.vmId}`);
          track.phase = 'provisioning';
          await vms.create({
            id: track.vmId,
            image: spec.imageId,
            cpus: spec.vcpus,
            memoryMiB: spec.memoryMiB,
            diskMiB: spec.diskMiB,
            network: spec.network,
          });
        } else if (step === 'start') {
          track.phase = 'starting';
          if (spec) await vms.setSkills(track.vmId, spec.skills);
          await vms.start(track.vmId);
        } else if (step === 'skills') {
          if (spec) await vms.setSkills(track.vmId, spec.skills);
        } else if (step === 'restart') {
          track.phase = 'starting';
          if (spec) await vms.setSkills(track.vmId, spec.skills);
          this.#health?.forget(track.vmId);
          await vms.restart(track.vmId);
        } else if (step === 'unquarantine') {
          this.#o.log?.(`VM ${track.vmId} is in the desired list again: out of quarantine`);
          await vms.unquarantine(track.vmId);
        } else if (step === 'network') {
          if (!spec) throw new WarrenError('INTERNAL', `no desired spec for the network of VM ${track.vmId}`);
          this.#o.log?.(`VM ${track.vmId}: network policy ${JSON.stringify(spec.network)}`);
          await vms.setNetworkPolicy(track.vmId, spec.network);
        } else if (step === 'stop') {
          track.phase = 'stopping';
          await vms.stop(track.vmId);
        } else {
          track.phase = 'stopping';
          this.#o.log?.(`destroying VM ${track.vmId}`);
          await vms.destroy(track.vmId);
        }
      }
      track.error = null;
      track.attempts = 0;
      track.retryAt = 0;
    } catch (e) {
      const err =
        e instanceof WarrenError ? e : new WarrenError('INTERNAL', String((e as Error)?.message ?? e));
      this.#o.onTaskError?.(err.code);
      let message = err.message;
      let retry = `retry in ${track.retryMs} ms`;
      track.retryAt = Date.now() + track.retryMs;
      if (steps.some((s) => STARTING_STEPS.has(s))) {
        track.attempts++;
        if (track.attempts >= this.#startMaxAttempts) {
          // Not silently forever: the report says it gave up, and how to try again.
          track.retryAt = Number.POSITIVE_INFINITY;
          retry = `gave up after ${track.attempts} attempts; run \`warren tenant start ${track.name ?? track.tenantId}\``;
          message = `${message.slice(0, 3800)}; ${retry}`;
        } else {
          retry = `attempt ${track.attempts} of ${this.#startMaxAttempts}, ${retry}`;
        }
      }
      track.error = { code: err.code, message: message.slice(0, 4096) };
      this.#o.log?.(`VM ${track.vmId}: ${steps.join('+')} failed: ${err.code}: ${err.message}; ${retry}`);
      track.retryMs = Math.min(track.retryMs * 2, this.#retryMaxMs);
    }
  }

  #trackOf(vmId: string): Track {
    let track = this.#tracks.get(vmId);
    if (!track) {
      track = {
        vmId,
        tenantId: tenantIdOfVm(vmId)!,
        generation: 0,
        error: null,
        retryAt: 0,
        retryMs: this.#retryInitialMs,
        lastActionAt: 0,
        attempts: 0,
        restartDelayMs: 0,
      };
      this.#tracks.set(vmId, track);
    }
    return track;
  }

  /** The tenant VMs on disk; VMs with other ids belong to operators and are never touched. */
  async #tenantVms(): Promise<Map<string, VmStatus>> {
    const out = new Map<string, VmStatus>();
    for (const vm of await this.#o.vms.list()) if (tenantIdOfVm(vm.id)) out.set(vm.id, vm);
    return out;
  }
}

/** The same packages attached (by name and digest), in any order. */
function sameSkills(
  a: readonly { name: string; digest: string }[],
  b: readonly { name: string; digest: string }[],
): boolean {
  const key = (l: readonly { name: string; digest: string }[]) =>
    l
      .map((s) => `${s.name}@${s.digest}`)
      .sort()
      .join(',');
  return key(a) === key(b);
}

function samePolicy(a: NetworkPolicy | undefined, b: NetworkPolicy): boolean {
  return a !== undefined && JSON.stringify(NetworkPolicy.parse(a)) === JSON.stringify(NetworkPolicy.parse(b));
}

/** What to do to get from `vm` to `want`; 'wait' while someone else has the VM mid-transition. */
function stepsTo(want: DesiredState, vm: VmStatus | undefined): Step[] | 'wait' {
  if (want === 'absent') return vm ? ['destroy'] : [];
  if (!vm) return want === 'running' ? ['create', 'start'] : ['create'];
  if (vm.state === 'starting' || vm.state === 'stopping') return 'wait';
  // A suspended VM stays so until a request needs it or a new generation says start (wakesSuspended).
  if (want === 'running') return vm.state === 'running' || vm.state === 'suspended' ? [] : ['start'];
  // A crashed VM is not running, but its record still says it should: stop() settles that.
  return vm.state === 'stopped' ? [] : ['stop'];
}

/**
 * Desired running and suspended: woken only for a new generation (`tenant start`). A track this
 * process has not acted on yet (generation 0, after an agent restart) does not count as new, so
 * a restart never wakes every suspended tenant at once.
 */
function wakesSuspended(
  want: DesiredState,
  vm: VmStatus | undefined,
  acted: number,
  generation: number,
): boolean {
  return want === 'running' && vm?.state === 'suspended' && acted !== 0 && generation !== acted;
}

/** Each desired tenant VM's idle timeout (null: never), for the idle check. */
function idleTimeoutsOf(tenants: readonly DesiredTenant[]): Map<string, number | null> {
  return new Map(tenants.map((t) => [vmIdOfTenant(t.tenantId), t.idleTimeoutMs ?? null]));
}

/** A task's phase wins (it knows more than the disk), then a failure, then the VM's own state. */
function stateOf(track: Track | undefined, vm: VmStatus | undefined): ReportedVm['state'] | undefined {
  if (track?.task && track.phase) return track.phase;
  if (track?.error) return 'failed';
  return vm?.state;
}
