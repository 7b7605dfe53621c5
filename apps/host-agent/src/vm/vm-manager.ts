import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ImageStore, VerifiedImage } from '@warren/images';
import {
  type ChangeList,
  CONFIG_DIR,
  type CreatedSnapshot,
  CreateSnapshotRequest,
  Credentials,
  DATA_VOLUME_MOUNT,
  type DesiredConfig,
  type DesiredSkill,
  type GuestCredentials,
  GuestSecrets,
  MAX_LISTED_CHANGES,
  NetworkPolicy,
  parseOrThrow,
  RESOURCE_LIMITS,
  type RevertResult,
  resourceAmount,
  SECRETS_DIR,
  SKILLS_MOUNT_DIR,
  type Snapshot,
  type SnapshotMemory,
  WarrenError,
} from '@warren/protocol';
import { z } from 'zod';
import type { Accelerator } from '../accel.ts';
import { mergeIntoRawBase } from '../backup/merge.ts';
import type { CgroupDriver, CgroupHandle, CgroupUsage, IoLimit } from '../cgroups/cgroups.ts';
import { changedFilesIsolated } from '../disk-changes/index.ts';
import { GuestClient } from '../guest/guest-client.ts';
import type { HostNetwork } from '../net/host-network.ts';
import { SkillDisks } from '../skills/skill-disks.ts';
import {
  DISK_NAMES,
  type DiskChains,
  type DiskName,
  DisksNotSwitched,
  type RunningVm,
  skillDiskSerial,
  type VmExit,
  type VmLaunchSpec,
  type VmmDriver,
} from '../vmm/driver.ts';
import { INITIAL_CHAINS, LAYERS_DIR, layerFormat, layersDir } from '../vmm/vm-disks.ts';
import { IdleReclaimer } from './idle.ts';
import { JailIdAllocator, type UidRange } from './jail-ids.ts';
import { dropSuspend, SUSPEND_DIR } from './suspend.ts';
import { freshRoot, rootFromTemplate, type Template, Templates } from './templates.ts';
import { VmLinks } from './vm-links.ts';
import { type BackupMark, type SnapshotRecord, VmId, type VmRecord, VmRecords } from './vm-records.ts';
import {
  chainsOf,
  collectGarbage,
  defaultSnapshotName,
  publicSnapshot,
  SNAPSHOTS_DIR,
} from './vm-snapshots.ts';
import { checkWorkload, WORKLOAD_CHECKS } from './workload-health.ts';

export { VmId } from './vm-records.ts';

export const CreateVmRequest = z.strictObject({
  id: VmId.optional(),
  image: z.string().min(8).max(80),
  cpus: resourceAmount('vcpus').default(RESOURCE_LIMITS.vcpus.default),
  memoryMiB: resourceAmount('memoryMiB').default(RESOURCE_LIMITS.memoryMiB.default),
  /** Size of the persistent data volume mounted at /workspace. */
  diskMiB: resourceAmount('diskMiB').default(RESOURCE_LIMITS.diskMiB.default),
  /**
   * Gives the VM a NIC behind the platform firewall with this policy (tenant VMs get one from
   * the reconciler). Without it, or with WARREN_NETWORK=off, the VM has no network at all.
   */
  network: NetworkPolicy.optional(),
});
export type CreateVmRequest = z.input<typeof CreateVmRequest>;

export function backupsUnsupported(vmm: string, running: boolean): WarrenError {
  return new WarrenError(
    'BACKUPS_UNSUPPORTED',
    `the ${vmm} VMM of this host cannot freeze ${running ? "a running VM's" : "a VM's"} disks for a backup; run the VM on a host with WARREN_VMM=qemu`,
  );
}

/** What `backupPoint` hands its caller: the VM's record before the freeze, and the chains it froze. */
export interface BackupPoint {
  record: VmRecord;
  dir: string;
  frozen: DiskChains;
  pointInTime: string;
  /** The image's raw root filesystem, the root disk's base. */
  rootfsPath: string;
}

/** `suspended`: idle-reclaimed, its memory and device state on disk and no VMM running; `start` wakes it. */
export type VmState = 'stopped' | 'starting' | 'running' | 'stopping' | 'crashed' | 'suspended';

/** What one health check found: the guest agent's answer, why there was none, or `busy` (not checked). */
export type Probe =
  | { state: 'busy' }
  /** `restarted`: the guest agent is not the one that answered last (init respawned it in the guest). */
  | { state: 'ok'; pid: number; restarted: boolean }
  | { state: 'failed'; pid: number; failure: string };

/** ENOSPC from a syscall, or a child process (qemu-img, QEMU, mkfs) saying so, anywhere in the cause chain. */
export function isDiskFull(e: unknown): boolean {
  for (let c: unknown = e, depth = 0; c && depth < 8; c = (c as { cause?: unknown }).cause, depth++) {
    if ((c as NodeJS.ErrnoException).code === 'ENOSPC') return true;
    if (/ENOSPC|No space left on device/i.test(String((c as Error).message ?? ''))) return true;
  }
  return false;
}

export interface VmStatus extends VmRecord {
  state: VmState;
  pid?: number;
  accelerator: Accelerator;
}

export interface VmManagerOptions {
  dataDir: string;
  /** Skill package disks (a default on `dataDir` when absent). */
  skills?: SkillDisks;
  store: ImageStore;
  driver: VmmDriver;
  accel: Accelerator;
  cgroups?: CgroupDriver;
  bootTimeoutMs: number;
  stopTimeoutMs: number;
  pidsMax: number;
  /** Each VM's disk I/O limit, when this host can enforce one (cgroups, and a block device under dataDir). */
  ioLimit?: IoLimit;
  /** The uids VMs' VMMs run as, one each. */
  jailUids: UidRange;
  /** Tenant networking; without it VMs get no NIC. */
  network?: HostNetwork;
  /** WARREN_IDLE_CHECK_MS: how often running VMs are checked against their idle timeouts. */
  idleCheckMs?: number;
  /** WARREN_WAKE_TIMEOUT_MS: how long a request waits for a suspended VM to wake. */
  wakeTimeoutMs?: number;
  /** Guest memory running VMs may hold together (WARREN_CAPACITY_MEMORY_MIB); see IdleReclaimer.makeRoom. */
  capacityMemoryMiB?: number;
  /**
   * Starts a VM's first boot from its image's template where the driver can (WARREN_TEMPLATE_START);
   * off by default here, so that a manager made without a config boots as before.
   */
  templateStart?: boolean;
  log?: (message: string) => void;
}

/**
 * Filler sent through the guest channel after a credentials wipe, to overwrite the guest
 * kernel's virtio-serial receive buffers (see GuestClient.scrub). Measured under TCG: 1 MiB
 * left an old request in one of them, 4 MiB none; twice that for margin.
 */
const SCRUB_BYTES = 8 * 128 * 4096;
/** How long the guest's `sync` before a snapshot or a changed-files listing may take; they go on without it. */
const SYNC_TIMEOUT_MS = 30_000;
/** How long listing one disk's changed files may take before the worker is killed. */
const DISK_CHANGES_TIMEOUT_MS = 120_000;
/** Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;
/** Memory a VMM needs beyond guest RAM (TCG translation cache, device state, its own heap). */
const VMM_OVERHEAD_BYTES = 384 * 1024 * 1024;

interface Live {
  vm: RunningVm;
  guest?: GuestClient;
  /**
   * The start time of the guest agent last heard from, known from the moment the VM is ready:
   * a health check that meets another one knows the agent was restarted inside the guest, even
   * when that happened before the first check.
   */
  agentStartedAt?: number;
  /** Set while the host itself is ending the VM, so the exit is not reported as a crash. */
  expectingExit: boolean;
  /** The image's workload (WORKLOAD_CHECKS) answered since this VMM started: it is no longer starting. */
  workloadUp?: boolean;
}

/**
 * The lifecycle of this host's VMs: create, start, stop, kill, destroy, one operation per VM at
 * a time, and crash tracking of their VMM processes. Records on disk are VmRecords', links to
 * the host network VmLinks', and everything that depends on the VMM (disks, sockets, console,
 * the guest channel) the driver's: this class only knows each VM's directory.
 */
/**
 * How a VM came up, for metrics: `cold` a full boot, `template` from its image's template,
 * `wake` restored from suspend.
 */
export type BootKind = 'cold' | 'template' | 'wake';

export class VmManager extends EventEmitter<{
  exit: [id: string, exit: VmExit];
  /** A start ended: `ok` with how long it took until the guest agent answered. */
  boot: [id: string, boot: { kind: BootKind; ok: boolean; seconds: number }];
}> {
  readonly #o: VmManagerOptions;
  readonly #driver: VmmDriver;
  readonly #records: VmRecords;
  readonly #links: VmLinks;
  readonly #live = new Map<string, Live>();
  /** Each image's profile, for WORKLOAD_CHECKS (images are immutable). */
  readonly #profiles = new Map<string, string>();
  readonly #transitions = new Map<string, VmState>();
  /** One lifecycle operation per VM at a time. */
  readonly #locks = new Map<string, Promise<unknown>>();
  readonly #jailIds: JailIdAllocator;
  /** Session credentials in each VM's guest; held in memory only, to deliver them again after a snapshot. */
  readonly #credentials = new Map<string, GuestCredentials>();
  /**
   * Each VM's tenant secrets as the control plane last gave them (setSecrets), held in memory
   * only (never in vm.json, a file or a log line), to deliver them at every start, wake and
   * revert and again after a snapshot or suspend attempt wiped them. No entry: not known yet.
   */
  readonly #secrets = new Map<string, GuestSecrets>();
  /**
   * VMs in a revert: reported `running` throughout (a revert is not a lifecycle change of the
   * tenant; the control plane must not see it stop and start).
   */
  readonly #reverting = new Set<string>();
  /** Images' templates, when VMs start from them (templateStart and a driver with memory snapshots). */
  readonly #templates: Templates | undefined;
  /** The snapshot each VM has not been used since it was made from or reverted to (see `touch`). */
  readonly #unchangedSince = new Map<string, string>();
  /** Suspends in progress: a request that arrives meanwhile waits for it, then wakes the VM. */
  readonly #suspending = new Map<string, Promise<unknown>>();
  /** Wakes in progress, shared by every request that needs the VM. */
  readonly #waking = new Map<string, Promise<void>>();
  /** Idle tracking, the idle check loop, and making room in memory before a start (idle.ts). */
  readonly idle: IdleReclaimer;
  /** Skill packages' disks, fetched and verified per digest (skills/skill-disks.ts). */
  readonly skills: SkillDisks;
  /** Each VM's rendered configuration (desired), and the version last written into its guest. */
  readonly #config = new Map<
    string,
    { want: DesiredConfig | null; written?: string; writing?: Promise<void> }
  >();

  private constructor(options: VmManagerOptions) {
    super();
    this.#o = options;
    this.#driver = options.driver;
    const log = options.log ?? (() => {});
    this.#records = new VmRecords(options.dataDir, log);
    this.skills = options.skills ?? new SkillDisks({ dataDir: options.dataDir, log });
    this.#links = new VmLinks(this.#records, options.network, log);
    this.idle = new IdleReclaimer(
      {
        list: () => this.list(),
        suspend: (id, o) => this.suspend(id, { ...o, notIfBusy: true }),
        canSuspend: this.#canSuspend(),
      },
      {
        checkMs: options.idleCheckMs ?? 5_000,
        ...(options.capacityMemoryMiB !== undefined ? { capacityMemoryMiB: options.capacityMemoryMiB } : {}),
        log,
      },
    );
    this.#jailIds = new JailIdAllocator(options.jailUids, async () => {
      const held = new Set<number>();
      for (const r of await this.#records.all()) if (r.jail) held.add(r.jail.uid);
      return held;
    });
    const d = options.driver;
    if (options.templateStart && d.capabilities.memorySnapshots && d.snapshot && d.newTops) {
      this.#templates = new Templates({
        dataDir: options.dataDir,
        driver: d,
        bootTimeoutMs: options.bootTimeoutMs,
        withJailIds: (use) => this.#jailIds.allocate(use),
        imageExists: (imageId) =>
          options.store.getManifest(imageId).then(
            () => true,
            () => false,
          ),
        log,
      });
    } else {
      if (options.templateStart)
        log(
          `the ${d.name} VMM cannot snapshot a VM's memory: new VMs boot instead of starting from a template`,
        );
      this.#templates = undefined;
    }
  }

  /** Opens the manager and re-attaches to every VM whose VMM survived an agent restart. */
  static async open(options: VmManagerOptions): Promise<VmManager> {
    const { driver } = options;
    if (!driver.capabilities.accelerators.includes(options.accel)) {
      throw new WarrenError(
        'HOST_UNSUPPORTED',
        `the ${driver.name} VMM cannot run guests with ${options.accel}; set WARREN_ACCEL to one of ${driver.capabilities.accelerators.join(', ')}`,
      );
    }
    const m = new VmManager(options);
    await driver.open?.();
    await m.#records.open(async (id) => {
      await m
        .#cgroupOf(id)
        ?.remove()
        .catch(() => {});
    });
    for (const id of await m.#records.ids()) {
      const record = await m.#records.tryRead(id);
      if (!record) {
        options.log?.(`VM ${id}: vm.json is unreadable; left in place for inspection`);
        continue;
      }
      if (record.vmm !== driver.name) {
        // Its VMM may still run; only its own driver may find it, so it is left as it is.
        options.log?.(`VM ${id} belongs to the ${record.vmm} VMM, not ${driver.name}: left alone`);
        continue;
      }
      // Whatever a snapshot or revert cut short by a crash left behind.
      await collectGarbage(m.dirOf(id), record).catch(() => {});
      if (await m.#openSuspended(record)) continue;
      const vm = driver.capabilities.reAttach
        ? await driver.attach(await m.#launchSpec(record, false)).catch(() => undefined)
        : undefined;
      if (vm) {
        options.log?.(`re-attached to VM ${id} (${driver.name} pid ${vm.pid})`);
        m.#track(id, vm);
      } else if (record.desired === 'running') {
        await m.#recordExit(record, {
          code: null,
          signal: null,
          reason: 'VM process ended while the host agent was not running',
          graceful: false,
        });
      }
    }
    await m.#links.open((id) => m.#live.has(id));
    m.idle.start();
    await m.#templates
      ?.cleanUp()
      .catch((e: Error) => options.log?.(`cleaning up templates failed: ${e.message}`));
    return m;
  }

  /**
   * At start-up: a suspended VM stays suspended. A QEMU still there is one whose suspend was cut
   * short after its state was saved and recorded: it is ended without resuming its guest (the
   * saved memory is what the VM is). A VM not suspended loses a suspend directory a crash left.
   * True when the VM is suspended.
   */
  async #openSuspended(record: VmRecord): Promise<boolean> {
    const dir = this.dirOf(record.id);
    if (!record.suspended) {
      // A QEMU woken from it may still map its memory file: the name goes, its pages stay.
      await rm(join(dir, SUSPEND_DIR), { recursive: true, force: true });
      return false;
    }
    const vm = this.#driver.capabilities.reAttach
      ? await this.#driver
          .attach(await this.#launchSpec(record, false), { resume: false })
          .catch(() => undefined)
      : undefined;
    if (vm) {
      this.#o.log?.(`VM ${record.id}: ending the QEMU of a suspend cut short (pid ${vm.pid})`);
      vm.kill();
      await vm.exited;
    }
    await this.#cgroupOf(record.id)
      ?.remove()
      .catch(() => {});
    return true;
  }

  /** The driver VMs run under: its name (heartbeats report it), capabilities, and what it keeps of a VM. */
  get vmm(): Pick<VmmDriver, 'name' | 'capabilities' | 'traces'> {
    return this.#driver;
  }

  /** True when VMs can get a NIC (WARREN_NETWORK=on). */
  get networkEnabled(): boolean {
    return this.#links.enabled;
  }

  /** Renders the firewall ruleset from every VM on disk and applies it. */
  syncNetwork(): Promise<void> {
    return this.#links.sync();
  }

  /**
   * Sets the VM's network policy; the firewall changes at once, without a restart. A VM made
   * without a network (before networking was on) gets its link now and its NIC at next boot.
   */
  setNetworkPolicy(id: string, policy: NetworkPolicy): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const record = await this.#records.read(id);
      if (!this.#links.enabled) return this.#status(record);
      record.networkPolicy = parseOrThrow(NetworkPolicy, policy);
      if (!record.network) {
        await this.#links.allocate(id, async (net) => {
          record.network = net;
          await this.#records.write(record);
        });
      } else {
        await this.#records.write(record);
      }
      await this.#links.sync();
      return this.#status(record);
    });
  }

  dirOf(id: string): string {
    return this.#records.dirOf(id);
  }

  /** Makes the VM's disks and record; a crash mid-way leaves nothing (see VmRecords.create). */
  async create(request: CreateVmRequest): Promise<VmStatus> {
    const req = parseOrThrow(CreateVmRequest, request);
    const id = req.id ?? `vm-${randomBytes(4).toString('hex')}`;
    const dir = this.dirOf(id);
    if (this.#driver.longestSocketPath(dir).length > MAX_SOCKET_PATH) {
      throw new WarrenError(
        'HOST_UNSUPPORTED',
        `VM socket paths under ${dir} exceed ${MAX_SOCKET_PATH} bytes; use a shorter WARREN_DATA_DIR`,
      );
    }
    return this.#locked(id, () => this.#diskFull(id, 'making', () => this.#create(id, req)));
  }

  async #create(id: string, req: z.output<typeof CreateVmRequest>): Promise<VmStatus> {
    if (await this.#records.exists(id)) throw new WarrenError('CONFLICT', `VM ${id} already exists`);
    const image = await this.#o.store.verify(req.image);
    const record = await this.#records.create(id, async (partial, commit) => {
      await this.#driver.createDisks(partial, { baseImage: image.rootfsPath, dataMiB: req.diskMiB });
      const record: VmRecord = {
        snapshots: [],
        skills: [],
        id,
        imageId: image.id,
        cpus: req.cpus,
        memoryMiB: req.memoryMiB,
        diskMiB: req.diskMiB,
        createdAt: new Date().toISOString(),
        vmm: this.#driver.name,
        desired: 'stopped',
        neverStarted: true,
      };
      // The uid and the link are held until the commit: from then on the record on disk holds them.
      await this.#jailIds.allocate(async (ids) => {
        record.jail = ids;
        if (req.network && this.#links.enabled) {
          record.networkPolicy = req.network;
          await this.#links.allocate(id, async (net) => {
            record.network = net;
            await commit(record);
          });
        } else {
          await commit(record);
        }
      });
      return record;
    });
    return this.#status(record);
  }

  /**
   * Runs a create or start step; a full filesystem anywhere in it (a disk layer, the record,
   * QEMU's own files) becomes DISK_FULL, which says what to do, instead of a raw ENOSPC.
   */
  async #diskFull<T>(id: string, doing: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (!isDiskFull(e)) throw e;
      throw new WarrenError(
        'DISK_FULL',
        `no space left in ${this.#o.dataDir} while ${doing} VM ${id}; nothing half-made was kept: free space on that filesystem (quarantined VMs and old snapshots take room), then start it again`,
        { cause: e },
      );
    }
  }

  async get(id: string): Promise<VmStatus> {
    return this.#status(await this.#records.read(id));
  }

  /** What a running VM's cgroup has used (metrics); empty without cgroups or when it is not running. */
  async usage(id: string): Promise<CgroupUsage> {
    if (!this.#live.has(id)) return {};
    return (await this.#cgroupOf(id)?.usage()) ?? {};
  }

  async list(): Promise<VmStatus[]> {
    return (await this.#records.all()).map((r) => this.#status(r));
  }

  /** Boots the VM and waits until its guest agent answers. */
  start(id: string): Promise<VmStatus> {
    return this.#locked(id, () => this.#diskFull(id, 'starting', () => this.#start(id)));
  }

  /**
   * Ends the VM's VMM at once (its guest no longer answers, so a graceful power-off cannot
   * work) and boots it again; the data volume keeps what the guest had flushed.
   */
  restart(id: string): Promise<VmStatus> {
    return this.#locked(id, async () => {
      await this.#killLive(id);
      return this.#diskFull(id, 'restarting', () => this.#start(id));
    });
  }

  /**
   * Marks the VM quarantined for `keepMs` (until its `removeAfter`) and stops it gracefully. The mark is written
   * first: an agent that dies mid-stop still knows the VM is an orphan, not a VM to run.
   */
  quarantine(id: string, keepMs: number): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const record = await this.#records.read(id);
      if (!record.quarantine) {
        const now = Date.now();
        record.quarantine = {
          at: new Date(now).toISOString(),
          removeAfter: new Date(now + keepMs).toISOString(),
        };
        await this.#records.write(record);
      }
      return this.#stop(id);
    });
  }

  /** Takes the VM out of quarantine (adopted again); it keeps whatever state it had: stopped. */
  unquarantine(id: string): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const record = await this.#records.read(id);
      if (record.quarantine) {
        delete record.quarantine;
        await this.#records.write(record);
      }
      return this.#status(record);
    });
  }

  /**
   * One health check of a running VM's guest agent, within `timeoutMs`. Not a use of the VM
   * (no `touch`). `busy` while a lifecycle operation holds the VM (a snapshot pauses it, a
   * credentials wipe restarts its agent): those are not the guest's failures. A check that
   * fails drops the channel session, so the next one connects anew: a guest agent that was
   * restarted inside the guest (busybox init respawns it) never answers the old session.
   */
  async probe(id: string, timeoutMs: number): Promise<Probe> {
    const live = this.#live.get(id);
    if (!live) return { state: 'busy' };
    if (this.#locks.has(id) || this.#transitions.has(id) || this.#reverting.has(id)) return { state: 'busy' };
    let guest = live.guest && !live.guest.closed ? live.guest : undefined;
    try {
      if (!guest) {
        guest = await GuestClient.connect(live.vm.transport, timeoutMs);
        if (this.#live.get(id) !== live || (live.guest && !live.guest.closed)) {
          guest.close();
          return { state: 'busy' };
        }
        live.guest = guest;
      }
      const { agentStartedAt } = await guest.health(timeoutMs);
      const restarted =
        live.agentStartedAt !== undefined &&
        agentStartedAt !== undefined &&
        agentStartedAt !== live.agentStartedAt;
      live.agentStartedAt = agentStartedAt;
      const workload = await this.#workloadFailure(id, live, timeoutMs);
      if (workload) return { state: 'failed', pid: live.vm.pid, failure: workload };
      return { state: 'ok', pid: live.vm.pid, restarted };
    } catch (e) {
      if (guest && live.guest === guest) {
        guest.close();
        live.guest = undefined;
      }
      return { state: 'failed', pid: live.vm.pid, failure: (e as Error).message };
    }
  }

  /**
   * The image's workload health (`WORKLOAD_CHECKS`, by the image's profile: the OpenClaw
   * gateway's /healthz), over the VM's link. A workload that has not answered yet since the VMM
   * started is starting, not failing (OpenClaw takes minutes under TCG, and waits for its
   * token); once it has, a failed answer fails the check like a silent guest agent would.
   */
  async #workloadFailure(id: string, live: Live, timeoutMs: number): Promise<string | undefined> {
    if (!this.#links.enabled) return undefined;
    const record = await this.#records.read(id).catch(() => undefined);
    if (!record?.network) return undefined;
    let profile = this.#profiles.get(record.imageId);
    if (profile === undefined) {
      profile = (await this.#o.store.getManifest(record.imageId).catch(() => undefined))?.profile ?? '';
      this.#profiles.set(record.imageId, profile);
    }
    const check = WORKLOAD_CHECKS[profile];
    if (!check) return undefined;
    const failure = await checkWorkload(record.network.guestIp, check, timeoutMs);
    if (!failure) live.workloadUp = true;
    return live.workloadUp ? failure : undefined;
  }

  /** Where the VM's serial console is logged (named in boot and health errors). */
  consoleLog(id: string): string {
    return this.#driver.consoleLog(this.dirOf(id));
  }

  /** `start`, for a caller that holds the VM's lock. */
  async #start(id: string): Promise<VmStatus> {
    const record = await this.#records.read(id);
    if (this.#live.has(id)) return this.#status(record);
    if (record.vmm !== this.#driver.name) {
      throw new WarrenError(
        'CONFLICT',
        `VM ${id} was made by the ${record.vmm} VMM and this host runs ${this.#driver.name}; start it with WARREN_VMM=${record.vmm}, or destroy it`,
      );
    }
    this.#transitions.set(id, 'starting');
    this.touch(id);
    const suspended = record.suspended;
    // A woken guest gets its credentials again; a booted one starts without any.
    if (!suspended) this.#credentials.delete(id);
    const started = performance.now();
    let kind: BootKind = suspended ? 'wake' : 'cold';
    const booted = (ok: boolean) =>
      this.emit('boot', id, { kind, ok, seconds: (performance.now() - started) / 1000 });
    try {
      const status = await this.#startSteps(id, record, suspended, (k) => {
        kind = k;
      });
      booted(true);
      return status;
    } catch (e) {
      booted(false);
      throw e;
    }
  }

  async #startSteps(
    id: string,
    record: VmRecord,
    suspended: VmRecord['suspended'],
    setKind: (k: BootKind) => void,
  ): Promise<VmStatus> {
    try {
      record.desired = 'running';
      delete record.lastExit;
      if (record.jail) await this.#records.write(record);
      // A VM made before VMMs were jailed gets its own uid at its first start since.
      else await this.#jailIds.allocate((ids) => this.#records.write(Object.assign(record, { jail: ids })));
      await this.idle.makeRoom(id, record.memoryMiB);
      await this.#links.prepare(record);
      if (suspended) return await this.#wake(record, suspended);
      if (record.neverStarted) {
        // A template's device layout has no skill disks: a VM with packages boots.
        if (record.skills.length === 0 && (await this.#startFromTemplate(record))) {
          setKind('template');
          try {
            // Before the secrets, as after a boot: a workload waiting for its token (the
            // OpenClaw gateway) starts with its configuration in place.
            await this.#writeWantedConfig(id);
          } catch (e) {
            await this.#killLive(id);
            throw e;
          }
          await this.#deliverSecrets(id);
          return this.#finish(id, record);
        }
        delete record.neverStarted;
        await this.#records.write(record);
      }
      // A boot attaches the packages wanted now; a wake or a revert keeps those of its boot
      // (the saved device state has exactly those disks).
      record.attachedSkills = record.skills;
      await this.#records.write(record);
      const spec = await this.#launchSpec(record, true);
      await this.#launchUntilReady(record, spec);
      try {
        await this.#afterBoot(record);
      } catch (e) {
        // Running without its packages or configuration is not the VM that was asked for.
        await this.#killLive(id);
        throw e;
      }
      await this.#deliverSecrets(id);
      return this.#finish(id, record);
    } catch (e) {
      // A start that failed leaves nothing made for it behind: the VM is as a stopped one.
      if (!this.#live.has(id))
        await this.#cgroupOf(id)
          ?.remove()
          .catch(() => {});
      throw e;
    } finally {
      this.#transitions.delete(id);
    }
  }

  /**
   * Wakes a suspended VM (`start` holds its lock): a new VMM restores its memory (pages mapped on
   * demand from a `mapped` file) and device state on its unchanged disks, the guest's clock and
   * entropy are fixed up (`restored`, the first call), and credentials it had are delivered again.
   */
  async #wake(record: VmRecord, suspended: NonNullable<VmRecord['suspended']>): Promise<VmStatus> {
    const started = performance.now();
    const dir = this.dirOf(record.id);
    const spec = await this.#launchSpec(record, true, {
      dir: join(dir, suspended.dir),
      memory: suspended.memory,
    });
    await this.#launchUntilReady(
      record,
      spec,
      (c) => c.restored(),
      // From the guest's first instruction on it may write its disks: the saved memory is no
      // longer the VM's, so no later start may restore it again.
      () => dropSuspend(dir, record, (r) => this.#records.write(r)),
    );
    const creds = this.#credentials.get(record.id);
    if (creds) await (await this.#guest(record.id)).putCredentials(creds);
    await this.#deliverSecrets(record.id);
    // Its configuration may have changed while it slept.
    this.#writeConfigSoon(record.id);
    this.#o.log?.(`VM ${record.id} woke in ${Math.round(performance.now() - started)} ms`);
    return this.#finish(record.id, record);
  }

  /**
   * Suspends a running VM (idle reclamation): its memory and device state go to its suspend
   * directory, its QEMU ends and its memory (and cgroup) are returned to the host; its disks
   * stay as they are. Before the save the guest syncs its page cache to its disks and its
   * credentials are wiped (the guest agent restarting, the channel scrubbed), so the memory
   * file holds none; they are delivered again at wake while this agent runs. The suspend is
   * recorded in vm.json before QEMU ends, so it survives an agent restart. `unless`, asked
   * under the VM's lock, lets an idle check give up on a VM that got busy meanwhile; `notIfBusy`
   * gives up at once on a VM another operation holds (a start making room, which holds its own
   * VM's lock, must never wait for another's: two of them could wait for each other).
   */
  suspend(
    id: string,
    options: { unless?: () => boolean; why?: string; notIfBusy?: boolean } = {},
  ): Promise<VmStatus> {
    if (options.notIfBusy && this.#locks.has(id)) return this.get(id);
    const run = this.#locked(id, async () => {
      const record = await this.#records.read(id);
      const live = this.#live.get(id);
      if (!live) {
        if (record.suspended) return this.#status(record);
        throw new WarrenError('VM_NOT_RUNNING', `VM ${id} is not running, so it cannot be suspended`);
      }
      if (options.unless?.()) return this.#status(record);
      const d = this.#driver;
      if (!this.#canSuspend() || !d.suspend)
        throw new WarrenError(
          'HOST_UNSUPPORTED',
          `the ${d.name} VMM of this host cannot suspend VMs; run the VM on a host with WARREN_VMM=qemu`,
        );
      const started = performance.now();
      this.#transitions.set(id, 'stopping');
      const creds = this.#credentials.get(id);
      const dir = this.dirOf(id);
      try {
        let taken: Awaited<ReturnType<typeof d.suspend>>;
        try {
          if (creds || (await this.#mayHoldSecrets(id))) await this.#wipeAndScrub(id, live);
          await this.#syncGuest(id);
          await rm(join(dir, SUSPEND_DIR), { recursive: true, force: true });
          await mkdir(join(dir, SUSPEND_DIR), { mode: 0o700 });
          taken = await d.suspend(live.vm, await this.#launchSpec(record, false), join(dir, SUSPEND_DIR));
        } catch (e) {
          // The VM runs on (a failed save resumes it): as it was, with its credentials.
          await rm(join(dir, SUSPEND_DIR), { recursive: true, force: true });
          if (creds)
            await this.#guest(id)
              .then((g) => g.putCredentials(creds))
              .catch((err: Error) =>
                this.#o.log?.(
                  `VM ${id}: delivering credentials after a failed suspend failed: ${err.message}`,
                ),
              );
          await this.#deliverSecrets(id);
          throw e;
        }
        // Recorded before QEMU ends: from here on the saved state is the VM.
        live.expectingExit = true;
        record.suspended = { dir: SUSPEND_DIR, memory: taken.memory, at: new Date().toISOString() };
        await this.#records.write(record);
        live.guest?.close();
        await live.vm.quit();
        if (!(await settlesWithin(live.vm.exited, 10_000))) live.vm.kill();
        await live.vm.exited;
        await this.#settled(id);
        this.#o.log?.(
          `VM ${id} suspended in ${Math.round(performance.now() - started)} ms (paused ${Math.round(taken.pausedMs)} ms)${options.why ? `: ${options.why}` : ''}`,
        );
        return this.#finish(id, await this.#records.read(id));
      } finally {
        this.#transitions.delete(id);
      }
    });
    this.#suspending.set(id, run);
    void run
      .catch(() => {})
      .finally(() => {
        if (this.#suspending.get(id) === run) this.#suspending.delete(id);
      });
    return run;
  }

  #canSuspend(): boolean {
    return this.#driver.capabilities.suspend && this.#driver.suspend !== undefined;
  }

  /**
   * Makes sure a VM a request needs is not suspended: waits for a suspend in progress, then
   * wakes the VM (one wake shared by every request that asks meanwhile), within the wake timeout.
   */
  async awake(id: string): Promise<void> {
    await this.#suspending.get(id)?.catch(() => {});
    const ms = this.#o.wakeTimeoutMs ?? 60_000;
    // A start (or wake) in progress: the request waits for it, as for a wake of its own, so a
    // call that arrives while the control plane still reads `starting` does not fail.
    const starting = this.#transitions.get(id) === 'starting' ? this.#locks.get(id) : undefined;
    if (starting)
      await settlesWithin(
        starting.catch(() => {}),
        ms,
      );
    if (this.#live.has(id)) return;
    const record = await this.#records.read(id);
    if (!record.suspended) return;
    let wake = this.#waking.get(id);
    if (!wake) {
      wake = this.start(id).then(() => undefined);
      const w = wake;
      this.#waking.set(id, w);
      void w
        .catch(() => {})
        .finally(() => {
          if (this.#waking.get(id) === w) this.#waking.delete(id);
        });
    }
    if (!(await settlesWithin(wake, ms)))
      throw new WarrenError(
        'TIMEOUT',
        `VM ${id} did not wake from suspend within ${ms} ms (WARREN_WAKE_TIMEOUT_MS); try again`,
      );
    await wake;
  }

  /**
   * A first start from the image's template (templates.ts): the template's root layer is copied
   * under the VM's root disk, a new QEMU loads the template's memory and device state on the
   * VM's own disks and NIC, and the guest is given the VM's identity before the VM counts as
   * started. False (logged) when templates are off or unsupported here, or the template could
   * not be made or started from: the caller then boots the VM, with a fresh root overlay.
   */
  async #startFromTemplate(record: VmRecord): Promise<boolean> {
    const templates = this.#templates;
    if (!templates) return false;
    const id = record.id;
    // Only the disks create made: a volume restored before the first start (replaceVolumes)
    // is not the template's root disk, which the template's memory expects.
    if (record.snapshots.length > 0 || chainsOf(record).root.join('/') !== INITIAL_CHAINS.root.join('/')) {
      this.#o.log?.(`VM ${id}: its root disk is not a new one; booting it`);
      return false;
    }
    const dir = this.dirOf(id);
    const nic = this.#links.nicOf(record);
    const key = {
      imageId: record.imageId,
      cpus: record.cpus,
      memoryMiB: record.memoryMiB,
      accel: this.#o.accel,
      vmm: this.#driver.name,
      nic: nic !== undefined,
    };
    const started = performance.now();
    let template: Template;
    try {
      template = await templates.get(key, await this.#o.store.verify(record.imageId));
      await rootFromTemplate(dir, template);
    } catch (e) {
      this.#o.log?.(`VM ${id}: no template to start from (${(e as Error).message}); booting it`);
      return false;
    }
    try {
      delete record.neverStarted;
      await this.#records.write(record);
      const spec = await this.#launchSpec(record, true, { dir: template.dir, memory: 'stream' });
      const dataBytes = (await stat(join(dir, chainsOf(record).data[0]!))).size;
      const net = record.network;
      let loadedMs = 0;
      await this.#launchUntilReady(record, spec, undefined, () => {
        loadedMs = performance.now() - started;
      });
      const answeredMs = performance.now() - started;
      // Called once, not as the readiness check: a guest that cannot take the identity fails
      // the template start at once (and the VM boots), instead of being asked until the boot timeout.
      const live = this.#live.get(id);
      if (!live?.guest) throw new WarrenError('GUEST_UNAVAILABLE', `VM ${id} ended right after its restore`);
      await this.#driver.announceDiskSizes?.(live.vm, spec);
      const taken = await live.guest.identity({
        hostname: id,
        machineId: randomBytes(16).toString('hex'),
        dataBytes,
        ...(nic && net
          ? { network: { mac: net.mac, address: `${net.guestIp}/30`, gateway: net.hostIp, dns: net.hostIp } }
          : {}),
      });
      // Without a reseed the guest's random generator would go on from the template's state,
      // the same in every tenant of it, until its next scheduled reseed.
      if (!taken.reseeded)
        throw new WarrenError(
          'INTERNAL',
          `the guest of VM ${id} could not reseed its kernel random generator`,
        );
      this.#o.log?.(
        `VM ${id} started from its template in ${Math.round(performance.now() - started)} ms (state loaded at ${Math.round(loadedMs)} ms, guest agent answered at ${Math.round(answeredMs)} ms)`,
      );
      return true;
    } catch (e) {
      this.#o.log?.(`VM ${id}: starting from its template failed (${(e as Error).message}); booting it`);
      await this.#killLive(id);
      await templates.discard(key, (e as Error).message).catch(() => {});
      await freshRoot(dir, (await this.#imagePaths(record.imageId)).rootfsPath);
      record.desired = 'running';
      return false;
    }
  }

  /** Graceful power-off through the guest agent; the VMM's quit and then SIGKILL after the timeout. */
  stop(id: string, timeoutMs = this.#o.stopTimeoutMs): Promise<VmStatus> {
    return this.#locked(id, () => this.#stop(id, timeoutMs));
  }

  /** `stop`, for a caller that holds the VM's lock. */
  async #stop(id: string, timeoutMs = this.#o.stopTimeoutMs): Promise<VmStatus> {
    const record = await this.#records.read(id);
    record.desired = 'stopped';
    await this.#records.write(record);
    // A suspended VM's memory is discarded: its guest synced its disks before the suspend.
    await dropSuspend(this.dirOf(id), record, (r) => this.#records.write(r));
    const live = this.#live.get(id);
    if (!live) return this.#status(record);
    this.#transitions.set(id, 'stopping');
    live.expectingExit = true;
    try {
      const guest = await this.#guest(id).catch(() => undefined);
      await guest?.shutdown().catch(() => {});
      if (!(await settlesWithin(live.vm.exited, timeoutMs))) {
        this.#o.log?.(`VM ${id} did not power off within ${timeoutMs} ms: quitting its VMM`);
        await live.vm.quit();
        if (!(await settlesWithin(live.vm.exited, 5_000))) live.vm.kill();
      }
      await live.vm.exited;
      await this.#settled(id);
      return this.#finish(id, await this.#records.read(id));
    } finally {
      this.#transitions.delete(id);
    }
  }

  /** Hard stop: SIGKILL to the VMM. The data volume keeps what the guest had flushed. */
  kill(id: string): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const record = await this.#records.read(id);
      record.desired = 'stopped';
      await this.#records.write(record);
      await dropSuspend(this.dirOf(id), record, (r) => this.#records.write(r));
      await this.#killLive(id);
      return this.#status(await this.#records.read(id));
    });
  }

  /** Kills the VM if it runs and removes every file, the cgroup, the TAP and what the driver kept of it. */
  destroy(id: string): Promise<void> {
    return this.#locked(id, async () => {
      const record = await this.#records.read(id);
      await this.#killLive(id);
      await this.#cgroupOf(id)?.remove();
      // Before the directory: if the agent dies in between, the VM is still there to destroy again.
      await this.#links.removeTap(record);
      await this.#driver.forget?.(id, this.dirOf(id));
      await this.#records.remove(id);
      await this.#links.forget(record);
      this.#secrets.delete(id);
      this.#config.delete(id);
    });
  }

  /** SIGKILLs the VM's VMM, if it runs, and waits until its exit is recorded. */
  async #killLive(id: string): Promise<void> {
    const live = this.#live.get(id);
    if (!live) return;
    live.expectingExit = true;
    live.vm.kill();
    await live.vm.exited;
    await this.#settled(id);
  }

  /**
   * The guest agent client of a running VM (connected on first use, reconnected if lost), for
   * a caller's exec or file call: that counts as use (`touch`).
   */
  async guest(id: string): Promise<GuestClient> {
    this.touch(id);
    await this.awake(id);
    return this.#guest(id);
  }

  /**
   * Marks the VM as used: since its last snapshot or revert (so a session's clean snapshot is
   * taken anew), and now (idle reclamation).
   */
  touch(id: string): void {
    this.#unchangedSince.delete(id);
    this.idle.touch(id);
  }

  async #guest(id: string): Promise<GuestClient> {
    const live = this.#live.get(id);
    if (!live) {
      await this.#records.read(id);
      throw new WarrenError('VM_NOT_RUNNING', `VM ${id} is not running`);
    }
    if (live.guest && !live.guest.closed) return live.guest;
    live.guest = await GuestClient.connect(live.vm.transport, 10_000);
    return live.guest;
  }

  #requireSnapshots(): Required<Pick<VmmDriver, 'snapshot' | 'newTops'>> {
    const d = this.#driver;
    if (!d.capabilities.memorySnapshots || !d.capabilities.diskSnapshots || !d.snapshot || !d.newTops) {
      throw new WarrenError(
        'SNAPSHOTS_UNSUPPORTED',
        `the ${d.name} VMM of this host cannot snapshot VMs; run the VM on a host with WARREN_VMM=qemu`,
      );
    }
    return { snapshot: d.snapshot.bind(d), newTops: d.newTops.bind(d) };
  }

  async snapshots(id: string): Promise<Snapshot[]> {
    const record = await this.#records.read(id);
    return Promise.all(record.snapshots.map((s) => publicSnapshot(this.dirOf(id), s)));
  }

  /**
   * Snapshots a running VM: memory and device state, and both disks at the same instant. With
   * credentials in the guest they are wiped first (the guest agent restarting, so no copy stays
   * in its memory) and delivered again after, so the snapshot never holds them.
   */
  createSnapshot(id: string, request: CreateSnapshotRequest = {}): Promise<CreatedSnapshot> {
    const req = parseOrThrow(CreateSnapshotRequest, request);
    return this.#locked(id, async () => {
      const driver = this.#requireSnapshots();
      if (!this.#live.has(id) && (await this.#records.read(id)).suspended) await this.#start(id);
      const record = await this.#records.read(id);
      const live = this.#live.get(id);
      if (!live) throw new WarrenError('VM_NOT_RUNNING', `VM ${id} is not running; start it to snapshot it`);
      const dir = this.dirOf(id);
      const existing = req.name ? record.snapshots.find((s) => s.name === req.name) : undefined;
      if (existing) {
        if (!req.reuse)
          throw new WarrenError('CONFLICT', `VM ${id} already has a snapshot named ${req.name}`);
        if (this.#unchangedSince.get(id) === existing.name)
          return { snapshot: await publicSnapshot(dir, existing), reused: true };
        await this.#dropSnapshot(record, existing.name);
      }
      const name = req.name ?? defaultSnapshotName(new Set(record.snapshots.map((s) => s.name)));
      const creds = this.#credentials.get(id);
      const secrets = await this.#mayHoldSecrets(id);
      if (creds || secrets) await this.#wipeAndScrub(id, live);
      try {
        // What the guest holds in its page cache goes to the disks first, so the frozen layers
        // show what the guest saw (the changed-files list compares layers); best effort.
        await this.#syncGuest(id);
        const spec = await this.#launchSpec(record, false);
        const before = chainsOf(record);
        const tops = await driver.newTops(dir, before, spec.image);
        // Recorded before the switch: the new tops sit on the old ones, so whether or not the
        // VM got to write to them, this chain holds every write (a crash loses nothing).
        record.disks = tops;
        await this.#records.write(record);
        const snapDir = `${SNAPSHOTS_DIR}/${name}`;
        await rm(join(dir, snapDir), { recursive: true, force: true });
        await mkdir(join(dir, snapDir), { recursive: true, mode: 0o700 });
        let taken: Awaited<ReturnType<typeof driver.snapshot>>;
        try {
          taken = await driver.snapshot(live.vm, spec, join(dir, snapDir), tops);
        } catch (e) {
          await rm(join(dir, snapDir), { recursive: true, force: true });
          throw e;
        }
        const snapshot: SnapshotRecord = {
          name,
          createdAt: new Date().toISOString(),
          parent:
            record.basedOn && record.snapshots.some((s) => s.name === record.basedOn) ? record.basedOn : null,
          memory: taken.memory,
          pausedMs: taken.pausedMs,
          dir: snapDir,
          disks: before,
          ...(record.attachedSkills?.length ? { skills: record.attachedSkills } : {}),
        };
        record.snapshots.push(snapshot);
        record.basedOn = name;
        await this.#records.write(record);
        this.#unchangedSince.set(id, name);
        return { snapshot: await publicSnapshot(dir, snapshot), reused: false };
      } finally {
        if (creds) await (await this.#guest(id)).putCredentials(creds);
        if (secrets) await this.#deliverSecrets(id);
      }
    });
  }

  /**
   * Brings the VM back to a snapshot: a new VMM starts from its memory and device state on new
   * top layers over its disks; whatever the VM did since is gone (that is the request). The
   * guest's clock and entropy are fixed up before this returns.
   */
  revertSnapshot(id: string, name: string): Promise<RevertResult> {
    return this.#locked(id, async () => {
      const started = performance.now();
      const driver = this.#requireSnapshots();
      const record = await this.#records.read(id);
      const snapshot = record.snapshots.find((s) => s.name === name);
      if (!snapshot) throw new WarrenError('NOT_FOUND', `VM ${id} has no snapshot named ${name}`);
      const dir = this.dirOf(id);
      this.#reverting.add(id);
      try {
        const image = await this.#o.store.verify(record.imageId);
        const [tops] = await Promise.all([driver.newTops(dir, snapshot.disks, image), this.#killLive(id)]);
        this.#credentials.delete(id);
        await dropSuspend(dir, record, (r) => this.#records.write(r));
        record.disks = tops;
        record.basedOn = name;
        record.desired = 'running';
        // The snapshot's device state has the skill disks it was taken with.
        record.attachedSkills = snapshot.skills ?? [];
        delete record.lastExit;
        await this.#records.write(record);
        await collectGarbage(dir, record);
        await this.#links.prepare(record);
        const spec = await this.#launchSpec(record, true, {
          dir: join(dir, snapshot.dir),
          memory: snapshot.memory,
        });
        let resumedMs = 0;
        // The fix-up is the first call: a restored guest that answers it is ready.
        await this.#launchUntilReady(
          record,
          spec,
          (c) => c.restored(),
          () => {
            resumedMs = performance.now() - started;
          },
        );
        // The snapshot holds no secrets (they were wiped before it was taken): put them back;
        // and the configuration the tenant has now, not the one it had then.
        const config = this.#config.get(id);
        if (config) config.written = undefined;
        this.#writeConfigSoon(id);
        await this.#deliverSecrets(id);
        this.#unchangedSince.set(id, name);
        const revertMs = performance.now() - started;
        return { snapshot: await publicSnapshot(dir, snapshot), revertMs, resumedMs };
      } finally {
        this.#reverting.delete(id);
      }
    });
  }

  /**
   * A backup's point in time, under the VM's lock (so no snapshot, revert, restore or start
   * runs meanwhile): new empty tops go over the data disk (and the root disk with
   * `includeRoot`), recorded before the switch as snapshots do. A running VM's data volume is
   * frozen in the guest (fsfreeze, thawed by the guest itself after `freezeTimeoutMs` at the
   * latest) while QEMU switches its disks onto the tops in one transaction, so the layers below
   * hold a clean filesystem; the VM keeps running. `open` gets the frozen chains and opens
   * their files before the lock is let go: from then on the backup reads files nothing writes,
   * and a stop, a revert or even a destroy of the VM no longer concerns it.
   */
  backupPoint<T>(
    id: string,
    options: { includeRoot: boolean; freezeTimeoutMs: number },
    open: (point: BackupPoint) => Promise<T>,
  ): Promise<T> {
    return this.#locked(id, async () => {
      const d = this.#driver;
      const record = await this.#records.read(id);
      const live = this.#live.get(id);
      if (!d.newTops || (live && (!d.capabilities.diskSnapshots || !d.freezeDisks)))
        throw backupsUnsupported(d.name, live !== undefined);
      const dir = this.dirOf(id);
      const image = await this.#imagePaths(record.imageId);
      const before = chainsOf(record);
      const spec = live ? await this.#launchSpec(record, false) : undefined;
      const tops = await d.newTops(dir, before, image, options.includeRoot ? DISK_NAMES : ['data']);
      // Frozen before the record changes: a guest that cannot freeze leaves nothing to undo.
      let guest: GuestClient | undefined;
      try {
        guest = live ? await this.#guest(id) : undefined;
        await guest?.freeze(options.freezeTimeoutMs);
      } catch (e) {
        await collectGarbage(dir, record);
        throw e;
      }
      let pointInTime = new Date().toISOString();
      try {
        // Recorded before the switch, as snapshots do: the new tops sit on the old ones, so
        // whether or not QEMU got to write to them, this chain holds every write.
        record.disks = tops;
        await this.#records.write(record);
        if (live && spec) {
          try {
            await d.freezeDisks!(live.vm, spec, tops);
            pointInTime = new Date().toISOString();
          } catch (e) {
            // QEMU refused the switch and still writes the old tops: the record must say so again.
            if (e instanceof DisksNotSwitched) {
              record.disks = before;
              await this.#records.write(record);
              await collectGarbage(dir, record);
              throw e.cause;
            }
            throw e;
          }
        }
      } finally {
        await guest
          ?.thaw()
          .catch((e: Error) => this.#o.log?.(`VM ${id}: thawing its data volume failed: ${e.message}`));
      }
      return open({ record, dir, frozen: before, pointInTime, rootfsPath: image.rootfsPath });
    });
  }

  /** Records the last backup this host completed of the VM (see BackupMark); a VM gone meanwhile is no error. */
  setBackupMark(id: string, mark: BackupMark): Promise<void> {
    return this.#locked(id, async () => {
      const record = await this.#records.tryRead(id);
      if (!record) return;
      record.backupMark = mark;
      await this.#records.write(record);
    });
  }

  /**
   * After backup `markId` froze `frozen`: merges the layers it froze into each disk's bottom
   * layer, so a VM's chain does not grow by a layer per backup, and moves the mark down with
   * them. Only while the VM has no snapshots (they hold those layers as they are) and its chain
   * still builds on `frozen` (no revert or restore since). Running: QEMU merges them, the guest
   * running on (`mergeLayers`); stopped: the layers are written into a raw bottom layer here
   * (backup/merge.ts: the data disk's, a restored root disk's); a root disk over its image's
   * root.qcow2 keeps them until a merge while it runs. The chain and mark are written
   * after the merge: until then they still name the merged layers, which read the same.
   */
  mergeBackupLayers(id: string, markId: string, frozen: Partial<DiskChains>): Promise<void> {
    return this.#locked(id, async () => {
      const record = await this.#records.tryRead(id);
      if (!record || record.snapshots.length > 0) return;
      const dir = this.dirOf(id);
      const live = this.#live.get(id);
      for (const disk of DISK_NAMES) {
        const below = frozen[disk];
        const chain = chainsOf(record)[disk];
        if (!below || below.length < 2 || below.length >= chain.length) continue;
        if (below.some((layer, i) => chain[i] !== layer)) continue;
        if (live) {
          if (!this.#driver.mergeLayers) continue;
          const spec = await this.#launchSpec(record, false);
          await this.#driver.mergeLayers(live.vm, spec, disk, below.length - 1);
        } else if (layerFormat(below[0]!) === 'raw') {
          await mergeIntoRawBase(
            join(dir, below[0]!),
            below.slice(1).map((l) => join(dir, l)),
          );
        } else continue;
        record.disks = { ...chainsOf(record), [disk]: [below[0]!, ...chain.slice(below.length)] };
        if (record.backupMark?.id === markId) record.backupMark.chains[disk] = [below[0]!];
        await this.#records.write(record);
      }
      await collectGarbage(dir, record);
    });
  }

  /**
   * Replaces the VM's data volume (and its root disk, when `disks` has it) with new raw files,
   * under the VM's lock: `fill(disk, path)` writes each (a temporary name in the VM's layers
   * directory, which the agent's start-up garbage collection removes if this never finishes)
   * and returns its size; the VM is stopped only then, both chains are switched to the new
   * files in one record write, and the VM started again if it ran (or always). Nothing of the
   * old chains is removed here: snapshots that hold their layers keep them, layer GC collects
   * the rest, and the VM's original disks stay.
   */
  replaceVolumes(
    id: string,
    job: string,
    disks: readonly DiskName[],
    fill: (disk: DiskName, path: string) => Promise<number>,
    start: 'as-before' | 'always',
  ): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const dir = this.dirOf(id);
      await this.#records.read(id);
      await layersDir(dir);
      const made: Partial<Record<DiskName, { layer: string; size: number }>> = {};
      const tmp = (disk: DiskName) => join(dir, `${LAYERS_DIR}/.restore-${job}-${disk}`);
      try {
        for (const disk of disks) {
          const size = await fill(disk, tmp(disk));
          const layer = `${LAYERS_DIR}/${disk}-${job}.img`;
          await rename(tmp(disk), join(dir, layer));
          made[disk] = { layer, size };
        }
      } catch (e) {
        for (const disk of disks) await rm(tmp(disk), { force: true });
        throw e;
      }
      // A suspended VM counts as running: it boots afresh on its new volumes (its memory is of the old ones).
      const wasRunning = this.#live.has(id) || (await this.#records.read(id)).suspended !== undefined;
      if (wasRunning) await this.#stop(id);
      const record = await this.#records.read(id);
      const chains = chainsOf(record);
      record.disks = {
        root: made.root ? [made.root.layer] : chains.root,
        data: made.data ? [made.data.layer] : chains.data,
      };
      if (made.data) record.diskMiB = Math.ceil(made.data.size / (1024 * 1024));
      // The volumes are other ones now: no later backup may take them for the ones the mark froze.
      delete record.backupMark;
      delete record.basedOn;
      this.#unchangedSince.delete(id);
      await this.#records.write(record);
      await collectGarbage(dir, record);
      if (wasRunning || start === 'always') return this.#start(id);
      return this.#status(record);
    });
  }

  /**
   * The files that differ between a snapshot and the VM's disks now, on both disks, read from
   * the layers (no guest needed); a running guest is asked to `sync` first so that what it
   * holds in its page cache is on the disk. Parsed in an isolated worker (disk-changes/).
   */
  changedFiles(id: string, name: string): Promise<ChangeList> {
    return this.#locked(id, async () => {
      const record = await this.#records.read(id);
      const snapshot = record.snapshots.find((s) => s.name === name);
      if (!snapshot) throw new WarrenError('NOT_FOUND', `VM ${id} has no snapshot named ${name}`);
      if (this.#live.has(id)) await this.#syncGuest(id);
      const dir = this.dirOf(id);
      const image = await this.#imagePaths(record.imageId);
      const chain = (chains: DiskChains, disk: 'root' | 'data') => {
        const files = chains[disk].map((l) => join(dir, l));
        // A root disk sits on the image's rootfs, unless a restore made it a raw file of its own.
        return disk === 'root' && layerFormat(chains.root[0]!) === 'qcow2'
          ? { base: image.rootfsPath, baseFormat: 'raw' as const, layers: files }
          : { base: files[0]!, baseFormat: 'raw' as const, layers: files.slice(1) };
      };
      const now = chainsOf(record);
      const [root, data] = await Promise.all(
        (['root', 'data'] as const).map((disk) =>
          changedFilesIsolated(chain(snapshot.disks, disk), chain(now, disk), {
            disk,
            mountPoint: disk === 'root' ? '/' : DATA_VOLUME_MOUNT,
            max: MAX_LISTED_CHANGES,
            timeoutMs: DISK_CHANGES_TIMEOUT_MS,
          }),
        ),
      );
      const changes = [...root!.changes, ...data!.changes].sort((a, b) =>
        a.path < b.path ? -1 : a.path > b.path ? 1 : 0,
      );
      return {
        since: name,
        changes: changes.slice(0, MAX_LISTED_CHANGES),
        truncated: root!.truncated || data!.truncated || changes.length > MAX_LISTED_CHANGES,
      };
    });
  }

  deleteSnapshot(id: string, name: string): Promise<void> {
    return this.#locked(id, async () => {
      const record = await this.#records.read(id);
      if (!record.snapshots.some((s) => s.name === name))
        throw new WarrenError('NOT_FOUND', `VM ${id} has no snapshot named ${name}`);
      await this.#dropSnapshot(record, name);
    });
  }

  /** Asks the guest to write its page cache to its disks; a guest that does not answer is not waited for long. */
  async #syncGuest(id: string): Promise<void> {
    const guest = await this.#guest(id).catch(() => undefined);
    await guest?.exec({ argv: ['sync'], timeoutMs: SYNC_TIMEOUT_MS }).catch(() => {});
  }

  /** Removes a snapshot's record and files; layers later snapshots or the VM build on stay until unreferenced. */
  async #dropSnapshot(record: VmRecord, name: string): Promise<void> {
    const snapshot = record.snapshots.find((s) => s.name === name)!;
    record.snapshots = record.snapshots.filter((s) => s.name !== name);
    for (const s of record.snapshots) if (s.parent === name) s.parent = snapshot.parent;
    if (record.basedOn === name) delete record.basedOn;
    if (this.#unchangedSince.get(record.id) === name) this.#unchangedSince.delete(record.id);
    await this.#records.write(record);
    const dir = this.dirOf(record.id);
    await rm(join(dir, snapshot.dir), { recursive: true, force: true });
    await collectGarbage(dir, record);
  }

  /** Puts credentials in the running VM's guest tmpfs, replacing any there. */
  putCredentials(id: string, credentials: Credentials): Promise<void> {
    const creds = parseOrThrow(Credentials, credentials);
    return this.#locked(id, async () => {
      // A session starting on a suspended VM wakes it.
      if (!this.#live.has(id) && (await this.#records.read(id)).suspended) await this.#start(id);
      const guest = await this.#guest(id);
      const files: Record<string, string> = {};
      for (const [name, value] of Object.entries(creds.files))
        files[name] = value.startsWith('base64:')
          ? value.slice('base64:'.length)
          : Buffer.from(value, 'utf8').toString('base64');
      const forGuest: GuestCredentials = { files, env: creds.env };
      await guest.putCredentials(forGuest);
      this.#credentials.set(id, forGuest);
    });
  }

  /**
   * The tenant's secrets for this VM (values base64), the complete set, from the control plane;
   * kept in memory only. A running VM gets them at once, in place (a changed value replaced, a
   * removed one deleted); a stopped or suspended one at its next start or wake.
   */
  async setSecrets(id: string, files: Record<string, string>): Promise<void> {
    const secrets = parseOrThrow(GuestSecrets, { files });
    this.#secrets.set(id, secrets);
    await this.#locked(id, async () => {
      if (this.#secrets.get(id) !== secrets) return; // a newer set delivers
      if (this.#live.has(id) && !this.#transitions.has(id)) await this.#deliverSecrets(id, false);
    });
  }

  /** Forgets a VM's secrets (its tenant left this host); the guest keeps what it has until it stops. */
  forgetSecrets(id: string): void {
    this.#secrets.delete(id);
  }

  /**
   * Puts the VM's secrets into its guest, when this agent knows of them. An empty set is sent
   * only to a guest that may hold some (`fresh`: false, a change while it runs; its directory
   * is asked), so removed ones go; a guest just booted, woken, reverted or wiped holds none, and
   * one whose tenant has no secrets is not asked at all. A failure is logged, not thrown: a start
   * must not fail for it (an image whose guest agent predates secrets answers NOT_FOUND), and
   * the next change delivers again.
   */
  async #deliverSecrets(id: string, fresh = true): Promise<void> {
    const secrets = this.#secrets.get(id);
    if (!secrets) return;
    try {
      const guest = await this.#guest(id);
      if (Object.keys(secrets.files).length === 0) {
        if (fresh) return;
        if ((await guest.list(SECRETS_DIR).catch(() => [])).length === 0) return;
      }
      await guest.putSecrets(secrets);
    } catch (e) {
      this.#o.log?.(`VM ${id}: delivering its secrets failed: ${(e as Error).message}`);
    }
  }

  /**
   * Whether the guest may hold secrets, so a snapshot or suspend must wipe them first. Known
   * from memory once the control plane gave them; until then (an agent that just restarted)
   * the guest is asked whether its secrets directory has anything in it.
   */
  async #mayHoldSecrets(id: string): Promise<boolean> {
    const known = this.#secrets.get(id);
    if (known) return Object.keys(known.files).length > 0;
    const listed = await (await this.#guest(id)).list(SECRETS_DIR).catch(() => []);
    return listed.length > 0;
  }

  /**
   * Removes the credentials from the guest, leaving no copy in its memory (the guest agent
   * restarts, the channel is scrubbed), and from this agent's. A revert needs none of this:
   * it discards the guest's memory whole.
   */
  wipeCredentials(id: string): Promise<void> {
    return this.#locked(id, async () => {
      this.#credentials.delete(id);
      const live = this.#live.get(id);
      if (live) await this.#wipeAndScrub(id, live);
    });
  }

  /**
   * Wipes the guest's credentials, waits for the fresh guest agent that replaces the one that
   * held them, and scrubs the channel's receive buffers.
   */
  async #wipeAndScrub(id: string, live: Live): Promise<void> {
    const guest = await this.#guest(id);
    const before = (await guest.health()).agentStartedAt;
    await guest.wipeCredentials(true);
    guest.close();
    const deadline = Date.now() + this.#o.bootTimeoutMs;
    for (;;) {
      const next = await GuestClient.connect(live.vm.transport, 10_000).catch(() => undefined);
      const health = await next?.health(10_000).catch(() => undefined);
      if (next && health && health.agentStartedAt !== before) {
        live.guest = next;
        // The host asked for this restart: health checks are not to report it as the guest's.
        live.agentStartedAt = health.agentStartedAt;
        await next.scrub(SCRUB_BYTES);
        return;
      }
      next?.close();
      if (Date.now() > deadline)
        throw new WarrenError(
          'GUEST_UNAVAILABLE',
          `the guest agent of VM ${id} did not come back after wiping credentials`,
        );
      await sleep(100);
    }
  }

  /** Lets go of all VMs without stopping them (they keep running for the next agent). */
  close(): void {
    this.idle.close();
    for (const live of this.#live.values()) {
      live.guest?.close();
      live.vm.detach();
    }
    this.#live.clear();
    this.#driver.close?.();
  }

  #track(id: string, vm: RunningVm): Live {
    const live: Live = { vm, expectingExit: false };
    this.#live.set(id, live);
    void vm.exited.then(async (exit) => {
      if (this.#live.get(id) !== live) return;
      live.guest?.close();
      const record = await this.#records.tryRead(id);
      if (record) {
        if (!live.expectingExit && record.desired === 'running') {
          this.#o.log?.(`VM ${id} exited unexpectedly: ${exit.reason}`);
        }
        await this.#recordExit(record, exit, live.expectingExit);
      }
      // Removed only now, so whoever waits in #settled sees the exit already recorded.
      this.#live.delete(id);
      this.emit('exit', id, exit);
    });
    return live;
  }

  /** Waits until the exit handler of a VM has run. */
  async #settled(id: string): Promise<void> {
    while (this.#live.has(id)) await sleep(5);
  }

  async #recordExit(record: VmRecord, exit: VmExit, expected = false): Promise<void> {
    record.lastExit = { ...exit, at: new Date().toISOString() };
    // A suspended VM is still meant to run: its exit was the suspend's.
    if (expected && !record.suspended) record.desired = 'stopped';
    await this.#records.write(record).catch(() => {});
    if (record.desired !== 'running' || record.suspended)
      await this.#cgroupOf(record.id)
        ?.remove()
        .catch(() => {});
  }

  /**
   * Launches the VM and waits for its guest agent (`ready`: health by default); a VM that never
   * gets ready is killed and recorded stopped. `launched` runs when the VMM is up.
   */
  /**
   * The packages to attach at the VM's next boot (a running VM keeps its own until then).
   * Written to vm.json, so a restarted agent boots the VM with them too.
   */
  setSkills(id: string, skills: readonly DesiredSkill[]): Promise<void> {
    return this.#locked(id, async () => {
      const record = await this.#records.read(id);
      if (JSON.stringify(record.skills) === JSON.stringify(skills)) return;
      record.skills = [...skills];
      await this.#records.write(record);
    });
  }

  /**
   * The VM's rendered configuration files: written into its guest now if it runs and they
   * changed, and again after every boot or wake (the guest keeps them in a tmpfs).
   */
  setConfig(id: string, config: DesiredConfig | null): void {
    const entry = this.#config.get(id) ?? { want: null };
    entry.want = config;
    this.#config.set(id, entry);
    if (config && entry.written !== config.version && this.#live.has(id) && !this.#transitions.has(id))
      this.#writeConfigSoon(id);
  }

  /** Writes the configuration in the background (a failure is logged; the next change or boot tries again). */
  #writeConfigSoon(id: string): void {
    const entry = this.#config.get(id);
    if (!entry?.want || entry.writing) return;
    entry.writing = this.#writeConfig(id)
      .catch((e) => this.#o.log?.(`VM ${id}: writing its configuration failed: ${(e as Error).message}`))
      .finally(() => {
        entry.writing = undefined;
        if (entry.want && entry.written !== entry.want.version && this.#live.has(id))
          this.#writeConfigSoon(id);
      });
  }

  async #writeConfig(id: string): Promise<void> {
    const entry = this.#config.get(id);
    const want = entry?.want;
    if (!entry || !want) return;
    const guest = await this.#guest(id);
    for (const f of want.files) {
      // Through a shell with busybox, so every profile (minimal has no coreutils) does the same:
      // a directory the workspace user can read, the file replaced whole (rename).
      const path = `${CONFIG_DIR}/${f.name}`;
      const r = await guest.exec(
        {
          argv: [
            GUEST_BUSYBOX,
            'sh',
            '-c',
            'B=/usr/lib/warren/busybox; set -e; $B mkdir -p "$1"; $B chmod 755 /run/warren "$1"; $B cat > "$2.tmp"; $B chmod 644 "$2.tmp"; $B mv -f "$2.tmp" "$2"',
            'sh',
            CONFIG_DIR,
            path,
          ],
          timeoutMs: 30_000,
        },
        { stdin: f.content },
      );
      if (r.exitCode !== 0)
        throw new WarrenError('EXEC_FAILED', `writing ${path} in the guest exited with ${r.exitCode}`);
    }
    entry.written = want.version;
  }

  /**
   * After a boot: mounts each attached package read-only at /opt/warren/skills/<name>/ (the
   * disk found by its serial number, which the driver set to `wsk-<index>`), and writes the
   * configuration files.
   */
  async #afterBoot(record: VmRecord): Promise<void> {
    const attached = record.attachedSkills ?? [];
    if (attached.length > 0) {
      const guest = await this.#guest(record.id);
      const args = attached.flatMap((s, i) => [skillDiskSerial(i), s.name]);
      let stderr = '';
      const r = await guest.exec(
        {
          argv: [GUEST_BUSYBOX, 'sh', '-c', MOUNT_SKILLS, 'sh', SKILLS_MOUNT_DIR, ...args],
          timeoutMs: 60_000,
        },
        {
          onStderr: (c) => {
            stderr += c.toString();
          },
        },
      );
      if (r.exitCode !== 0)
        throw new WarrenError(
          'VM_BOOT_FAILED',
          `mounting the skill packages in VM ${record.id} failed (exit ${r.exitCode}): ${stderr.slice(0, 500)}`,
        );
    }
    await this.#writeWantedConfig(record.id);
  }

  /** Writes the configuration files now, whatever the guest had (a new boot, a template, a snapshot). */
  async #writeWantedConfig(id: string): Promise<void> {
    const entry = this.#config.get(id);
    if (entry?.want) {
      entry.written = undefined;
      await this.#writeConfig(id);
    }
  }

  async #launchUntilReady(
    record: VmRecord,
    spec: VmLaunchSpec,
    ready?: (client: GuestClient) => Promise<unknown>,
    launched?: () => unknown,
  ): Promise<void> {
    const vm = await this.#driver.launch(spec);
    const live = this.#track(record.id, vm);
    try {
      await launched?.();
      const agent = await this.#waitForAgent(record.id, vm, spec.dir, ready);
      live.guest = agent.client;
      live.agentStartedAt = agent.startedAt;
    } catch (e) {
      live.expectingExit = true;
      vm.kill();
      await vm.exited;
      record.desired = 'stopped';
      await this.#records.write(record);
      throw e;
    }
  }

  /**
   * Connects to the guest agent and waits until `ready` (its health by default) answers; also
   * returns the agent's start time (asked for when `ready` is not the health call), the
   * baseline of the health checks.
   */
  async #waitForAgent(
    id: string,
    vm: RunningVm,
    dir: string,
    ready?: (client: GuestClient) => Promise<unknown>,
  ): Promise<{ client: GuestClient; startedAt: number | undefined }> {
    const deadline = Date.now() + this.#o.bootTimeoutMs;
    let lastError: unknown;
    let exited = false;
    void vm.exited.then(() => {
      exited = true;
    });
    while (Date.now() < deadline && !exited) {
      try {
        const client = await GuestClient.connect(
          vm.transport,
          Math.min(10_000, Math.max(1, deadline - Date.now())),
        );
        if (ready) await ready(client);
        const { agentStartedAt } = await client.health(10_000);
        return { client, startedAt: agentStartedAt };
      } catch (e) {
        lastError = e;
        await sleep(100);
      }
    }
    const why = exited ? (await vm.exited).reason : `no answer within ${this.#o.bootTimeoutMs} ms`;
    throw new WarrenError(
      'VM_BOOT_FAILED',
      `VM ${id} did not become ready: ${why}; see ${this.#driver.consoleLog(dir)}`,
      { cause: lastError },
    );
  }

  /** The VM's cgroup when the agent makes it (cgroups on, and a driver that does not own them). */
  #cgroupOf(id: string): CgroupHandle | undefined {
    if (this.#driver.capabilities.ownsCgroups) return undefined;
    return this.#o.cgroups?.open(id);
  }

  async #launchSpec(
    record: VmRecord,
    verify: boolean,
    restore?: { dir: string; memory: SnapshotMemory },
  ): Promise<VmLaunchSpec> {
    // Every boot checks the image's digests first; a re-attach only needs the paths.
    const image = verify
      ? await this.#o.store.verify(record.imageId)
      : await this.#imagePaths(record.imageId);
    const agentCgroups = this.#driver.capabilities.ownsCgroups ? undefined : this.#o.cgroups;
    const cgroup = verify
      ? await agentCgroups?.create(record.id, {
          cpus: record.cpus,
          memoryBytes: record.memoryMiB * 1024 * 1024 + VMM_OVERHEAD_BYTES,
          pidsMax: this.#o.pidsMax,
          ...(this.#o.ioLimit ? { io: this.#o.ioLimit } : {}),
        })
      : agentCgroups?.open(record.id);
    const nic = this.#links.nicOf(record);
    const attached = record.attachedSkills ?? [];
    // A boot verifies every package's bundle and disk (SKILL_INTEGRITY); other uses only name them.
    const skills = verify
      ? await this.skills.prepare(attached)
      : attached.map((s) => ({ name: s.name, digest: s.digest, path: this.skills.diskPath(s.digest) }));
    return {
      id: record.id,
      dir: this.dirOf(record.id),
      image,
      ...(skills.length > 0 ? { skills } : {}),
      cpus: record.cpus,
      memoryMiB: record.memoryMiB,
      accel: this.#o.accel,
      ...(record.jail ? { jail: record.jail } : {}),
      directIo: this.#o.ioLimit !== undefined,
      ...(cgroup ? { cgroup } : {}),
      ...(nic ? { network: nic } : {}),
      disks: chainsOf(record),
      ...(restore ? { restore } : {}),
    };
  }

  async #imagePaths(imageId: string): Promise<VerifiedImage> {
    const manifest = await this.#o.store.getManifest(imageId);
    const s = this.#o.store;
    return {
      id: imageId,
      manifest,
      kernelPath: s.blobPath(manifest.kernel.digest),
      initrdPath: s.blobPath(manifest.initrd.digest),
      rootfsPath: s.blobPath(manifest.rootfs.digest),
    };
  }

  /** Ends a transition and reports the state it led to. */
  #finish(id: string, record: VmRecord): VmStatus {
    this.#transitions.delete(id);
    return this.#status(record);
  }

  #status(record: VmRecord): VmStatus {
    const live = this.#live.get(record.id);
    const transition = this.#transitions.get(record.id);
    let state: VmState;
    if (transition) state = transition;
    else if (this.#reverting.has(record.id)) state = 'running';
    else if (live) state = 'running';
    else if (record.suspended) state = 'suspended';
    else if (record.desired === 'running' && record.lastExit && !record.lastExit.graceful) state = 'crashed';
    else state = 'stopped';
    const status: VmStatus = {
      ...record,
      state,
      accelerator: this.#o.accel,
      ...(live ? { pid: live.vm.pid } : {}),
    };
    // With networking off the VM boots without a NIC, whatever link its record still holds.
    if (!this.#links.enabled) delete status.network;
    return status;
  }

  async #locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    parseOrThrow(VmId, id);
    const previous = this.#locks.get(id) ?? Promise.resolve();
    const next = previous.catch(() => {}).then(fn);
    this.#locks.set(id, next);
    try {
      return await next;
    } finally {
      if (this.#locks.get(id) === next) this.#locks.delete(id);
    }
  }
}

/** Every Warren guest has busybox here, whatever its profile. */
const GUEST_BUSYBOX = '/usr/lib/warren/busybox';

/**
 * Mounts the skill disks: $1 is the mount root, then pairs of (serial, package name). A disk is
 * found by the serial number its driver gave it (/sys/block/vdX/serial), not by its order.
 * Read-only, without device files or set-uid; mounting again what is mounted is a no-op.
 */
const MOUNT_SKILLS = `B=/usr/lib/warren/busybox
root=$1; shift
while [ $# -ge 2 ]; do
  serial=$1; name=$2; shift 2
  dev=
  for b in /sys/block/vd*; do
    [ "$($B cat "$b/serial" 2>/dev/null)" = "$serial" ] && dev=/dev/\${b##*/}
  done
  [ -n "$dev" ] || { echo "no disk with serial $serial for skill package $name" >&2; exit 3; }
  dir="$root/$name"
  $B mkdir -p "$dir"
  $B chmod 755 /opt/warren "$root" 2>/dev/null
  if ! $B grep -qs " $dir " /proc/mounts; then
    $B mount -t ext4 -o ro,nodev,nosuid,noload "$dev" "$dir" || { echo "cannot mount $dev at $dir" >&2; exit 4; }
  fi
done
`;

async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  const done = await Promise.race([p.then(() => true), timeout]);
  clearTimeout(timer);
  return done;
}
