import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { chmod, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ImageStore, run } from '@warren/images';
import { NetworkPolicy, parseOrThrow, RESOURCE_LIMITS, resourceAmount, WarrenError } from '@warren/protocol';
import { z } from 'zod';
import type { Accelerator } from '../accel.ts';
import type { CgroupDriver, IoLimit } from '../cgroups/cgroups.ts';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../fs-modes.ts';
import { GuestClient } from '../guest/guest-client.ts';
import { guestNetArg, lowestFreeIndex, tapName, type VmNetwork, vmNetworkAt } from '../net/address.ts';
import type { HostNetwork } from '../net/host-network.ts';
import type { RulesetVm } from '../net/ruleset.ts';
import type { RunningVm, VmExit, VmLaunchSpec, VmmDriver } from '../vmm/driver.ts';
import { JailIdAllocator, type UidRange } from './jail-ids.ts';

export const VmId = z
  .string()
  .regex(
    /^[a-z0-9][a-z0-9-]{0,39}$/,
    'a VM id is 1-40 lowercase letters, digits and dashes, starting alphanumeric',
  );

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

const VmRecord = z.object({
  id: VmId,
  imageId: z.string(),
  cpus: z.number().int(),
  memoryMiB: z.number().int(),
  diskMiB: z.number().int(),
  createdAt: z.string(),
  /** What the VM should be doing; an exit while `running` is a crash. */
  desired: z.enum(['running', 'stopped']),
  lastExit: z
    .object({
      reason: z.string(),
      graceful: z.boolean(),
      code: z.number().nullable(),
      signal: z.string().nullable(),
      at: z.string(),
    })
    .optional(),
  /** The VM's link, allocated once at create and kept for its life, so restarts give the same addresses. */
  network: z
    .object({
      index: z.number().int().nonnegative(),
      tap: z.string(),
      mac: z.string(),
      hostIp: z.string(),
      guestIp: z.string(),
    })
    .optional(),
  /** The uid and gid its VMM runs as, its own on this host; held as long as this record exists. */
  jail: z.object({ uid: z.number().int().positive(), gid: z.number().int().positive() }).optional(),
  /** What the firewall lets the VM reach; kept here so an agent restart renders the same rules before any heartbeat. */
  networkPolicy: NetworkPolicy.optional(),
});
type VmRecord = z.infer<typeof VmRecord>;

export type VmState = 'stopped' | 'starting' | 'running' | 'stopping' | 'crashed';

export interface VmStatus extends VmRecord {
  state: VmState;
  pid?: number;
  accelerator: Accelerator;
}

export interface VmManagerOptions {
  dataDir: string;
  store: ImageStore;
  driver: VmmDriver;
  accel: Accelerator;
  cgroups?: CgroupDriver;
  bootTimeoutMs: number;
  stopTimeoutMs: number;
  pidsMax: number;
  /** Each VM's disk I/O limit, when this host can enforce one (cgroups, and a block device under dataDir). */
  ioLimit?: IoLimit;
  /** The uids VMs' QEMUs run as, one each. */
  jailUids: UidRange;
  /** Tenant networking; without it VMs get no NIC. */
  network?: HostNetwork;
  log?: (message: string) => void;
}

/** VmId cannot start with a dot, so these never show up as VMs. */
const PARTIAL_PREFIX = '.partial-';
/** Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;
/** Memory QEMU needs beyond guest RAM (TCG translation cache, device state, its own heap). */
const VMM_OVERHEAD_BYTES = 384 * 1024 * 1024;

interface Live {
  vm: RunningVm;
  guest?: GuestClient;
  /** Set while the host itself is ending the VM, so the exit is not reported as a crash. */
  expectingExit: boolean;
}

/**
 * Owns the VMs of this host: their state directories, VMM processes, cgroups and guest
 * connections. Every VM lives in `<dataDir>/vms/<id>/`, and destroying it removes that
 * directory and its cgroup, which is all of it.
 */
export class VmManager extends EventEmitter<{ exit: [id: string, exit: VmExit] }> {
  readonly #o: VmManagerOptions;
  readonly #live = new Map<string, Live>();
  readonly #transitions = new Map<string, VmState>();
  /** One lifecycle operation per VM at a time. */
  readonly #locks = new Map<string, Promise<unknown>>();
  /** Network indexes handed out to creates that have not reached the disk yet. */
  readonly #reserved = new Set<number>();
  #allocating: Promise<unknown> = Promise.resolve();
  #networkSync: Promise<void> = Promise.resolve();
  readonly #jailIds: JailIdAllocator;

  private constructor(options: VmManagerOptions) {
    super();
    this.#o = options;
    this.#jailIds = new JailIdAllocator(options.jailUids, async () => {
      const held = new Set<number>();
      for (const id of await this.#ids()) {
        const r = await this.#read(id).catch(() => undefined);
        if (r?.jail) held.add(r.jail.uid);
      }
      return held;
    });
  }

  /** Opens the manager and re-attaches to every VM whose QEMU survived an agent restart. */
  static async open(options: VmManagerOptions): Promise<VmManager> {
    const m = new VmManager(options);
    await mkdir(m.#vmsDir, { recursive: true, mode: PRIVATE_DIR_MODE });
    await m.#removeDebris();
    for (const id of await m.#ids()) {
      const record = await m.#read(id).catch(() => undefined);
      if (!record) {
        options.log?.(`VM ${id}: vm.json is unreadable; left in place for inspection`);
        continue;
      }
      const vm = await options.driver.attach(await m.#launchSpec(record, false)).catch(() => undefined);
      if (vm) {
        options.log?.(`re-attached to VM ${id} (QEMU pid ${vm.pid})`);
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
    if (options.network) await m.#openNetwork(options.network);
    return m;
  }

  /**
   * Rebuilds the network state from the VMs on disk: TAPs of VMs that are gone are removed,
   * those of running VMs are repaired, and the ruleset is rendered and applied again. The same
   * VMs render the same ruleset, so this is idempotent.
   */
  async #openNetwork(network: HostNetwork): Promise<void> {
    const ids = await this.#ids();
    try {
      // By id, readable vm.json or not: a VM whose record cannot be read still owns its TAP.
      await network.sweep(new Set(ids.map((id) => tapName(id))));
      for (const id of ids) {
        const record = await this.#read(id).catch(() => undefined);
        if (record?.network && this.#live.has(id)) await network.ensureTap(id, record.network);
      }
      await this.syncNetwork();
    } catch (e) {
      // The kernel keeps the rules it had; no VM starts with a NIC until a sync succeeds.
      this.#o.log?.(`tenant network state not rebuilt: ${(e as Error).message}`);
    }
  }

  /** True when VMs can get a NIC (WARREN_NETWORK=on). */
  get networkEnabled(): boolean {
    return this.#o.network !== undefined;
  }

  /**
   * Renders the ruleset from every VM on disk and applies it. Calls queue up and each reads the
   * disk when its turn comes, so the last one applied always reflects the latest state.
   */
  syncNetwork(): Promise<void> {
    const network = this.#o.network;
    if (!network) return Promise.resolve();
    const next = this.#networkSync
      .catch(() => {})
      .then(async () => {
        const vms: RulesetVm[] = [];
        for (const id of await this.#ids()) {
          const record = await this.#read(id).catch(() => undefined);
          if (record?.network) {
            vms.push({
              id,
              network: record.network,
              policy: record.networkPolicy ?? NetworkPolicy.parse({}),
            });
          }
        }
        await network.apply(vms);
      });
    this.#networkSync = next;
    return next;
  }

  /**
   * Sets the VM's network policy; the firewall changes at once, without a restart. A VM made
   * without a network (before networking was on) gets its link now and its NIC at next boot.
   */
  setNetworkPolicy(id: string, policy: NetworkPolicy): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const record = await this.#read(id);
      if (!this.#o.network) return this.#status(record);
      record.networkPolicy = parseOrThrow(NetworkPolicy, policy);
      if (!record.network) {
        record.network = await this.#allocateNetwork(id, async (net) => {
          record.network = net;
          await this.#write(record);
        });
      } else {
        await this.#write(record);
      }
      await this.syncNetwork();
      return this.#status(record);
    });
  }

  /**
   * Picks the lowest free /30 and holds it until `persist` has written it to disk, so two
   * creates at once never get the same link. Addresses already on the host's interfaces
   * (another agent, an operator's) are skipped.
   */
  async #allocateNetwork(id: string, persist: (net: VmNetwork) => Promise<void>): Promise<VmNetwork> {
    const network = this.#o.network!;
    let index = -1;
    const pick = this.#allocating
      .catch(() => {})
      .then(async () => {
        const taken = new Set(this.#reserved);
        for (const other of await this.#ids()) {
          const r = await this.#read(other).catch(() => undefined);
          if (r?.network) taken.add(r.network.index);
        }
        const inUse = await network.addressesInUse();
        while (index < 0) {
          const i = lowestFreeIndex(network.plan, taken);
          const candidate = vmNetworkAt(network.plan, i, id);
          if (inUse.has(candidate.hostIp) || inUse.has(candidate.guestIp)) taken.add(i);
          else index = i;
        }
        this.#reserved.add(index);
      });
    this.#allocating = pick;
    await pick;
    try {
      const net = vmNetworkAt(network.plan, index, id);
      await persist(net);
      return net;
    } finally {
      this.#reserved.delete(index);
    }
  }

  get #vmsDir(): string {
    return join(this.#o.dataDir, 'vms');
  }

  dirOf(id: string): string {
    return join(this.#vmsDir, parseOrThrow(VmId, id));
  }

  /**
   * Builds the VM in `.partial-<id>` and renames it into place only once complete, so a crash
   * (even kill -9) mid-create leaves no half-made VM: the next open removes the partial dir.
   */
  async create(request: CreateVmRequest): Promise<VmStatus> {
    const req = parseOrThrow(CreateVmRequest, request);
    const id = req.id ?? `vm-${randomBytes(4).toString('hex')}`;
    const dir = this.dirOf(id);
    if (this.#o.driver.longestSocketPath(dir).length > MAX_SOCKET_PATH) {
      throw new WarrenError(
        'HOST_UNSUPPORTED',
        `VM socket paths under ${dir} exceed ${MAX_SOCKET_PATH} bytes; use a shorter WARREN_DATA_DIR`,
      );
    }
    return this.#locked(id, async () => {
      if (await exists(dir)) throw new WarrenError('CONFLICT', `VM ${id} already exists`);
      const image = await this.#o.store.verify(req.image);
      const partial = join(this.#vmsDir, `${PARTIAL_PREFIX}${id}`);
      // Left over only if this process lost a create mid-way without reaching the cleanup below.
      await rm(partial, { recursive: true, force: true });
      await mkdir(partial, { mode: PRIVATE_DIR_MODE });
      try {
        await this.#o.driver.createRootDisk(image.rootfsPath, join(partial, 'root.qcow2'));
        await createDataVolume(join(partial, 'data.img'), req.diskMiB);
        // Made by qemu-img and mkfs under whatever umask they apply: set, not assumed.
        for (const disk of ['root.qcow2', 'data.img']) await chmod(join(partial, disk), PRIVATE_FILE_MODE);
        const record: VmRecord = {
          id,
          imageId: image.id,
          cpus: req.cpus,
          memoryMiB: req.memoryMiB,
          diskMiB: req.diskMiB,
          createdAt: new Date().toISOString(),
          desired: 'stopped',
        };
        // The uid and the link are held until the rename: from then on the record on disk holds them.
        await this.#jailIds.allocate(async (ids) => {
          record.jail = ids;
          if (req.network && this.#o.network) {
            record.networkPolicy = req.network;
            record.network = await this.#allocateNetwork(id, async (net) => {
              record.network = net;
              await this.#write(record, partial);
              await rename(partial, dir);
            });
          } else {
            await this.#write(record, partial);
            await rename(partial, dir);
          }
        });
        return this.#status(record);
      } catch (e) {
        await rm(partial, { recursive: true, force: true });
        throw e;
      }
    });
  }

  /**
   * Removes what a crash mid-create left: `.partial-*` dirs, and VM dirs without vm.json (made
   * by agents that wrote vm.json last, in place). Dirs with a vm.json that fails to parse
   * are kept: they may hold a tenant's data, and a person should look at them.
   */
  async #removeDebris(): Promise<void> {
    const names = await readdir(this.#vmsDir).catch(() => [] as string[]);
    for (const name of names) {
      const path = join(this.#vmsDir, name);
      if (name.startsWith(PARTIAL_PREFIX)) {
        this.#o.log?.(`removing ${path}: a VM create that never finished`);
        await rm(path, { recursive: true, force: true });
      } else if (VmId.safeParse(name).success && !(await exists(join(path, 'vm.json')))) {
        this.#o.log?.(`removing ${path}: a VM directory without vm.json (an interrupted create)`);
        await this.#o.cgroups
          ?.open(name)
          .remove()
          .catch(() => {});
        await rm(path, { recursive: true, force: true });
      }
    }
  }

  async get(id: string): Promise<VmStatus> {
    return this.#status(await this.#read(id));
  }

  async list(): Promise<VmStatus[]> {
    const out: VmStatus[] = [];
    for (const id of await this.#ids()) {
      const record = await this.#read(id).catch(() => undefined);
      if (record) out.push(this.#status(record));
    }
    return out;
  }

  /** Boots the VM and waits until its guest agent answers. */
  start(id: string): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const record = await this.#read(id);
      if (this.#live.has(id)) return this.#status(record);
      this.#transitions.set(id, 'starting');
      try {
        record.desired = 'running';
        delete record.lastExit;
        if (record.jail) await this.#write(record);
        // A VM made before QEMUs were jailed gets its own uid at its first start since.
        else await this.#jailIds.allocate((ids) => this.#write(Object.assign(record, { jail: ids })));
        if (record.network && this.#o.network) {
          // The TAP and the rules that confine it exist before QEMU, so the guest's first packet is filtered.
          await this.#o.network.ensureTap(id, record.network);
          await this.syncNetwork();
        }
        const spec = await this.#launchSpec(record, true);
        const vm = await this.#o.driver.launch(spec);
        const live = this.#track(id, vm);
        try {
          live.guest = await this.#waitForAgent(id, vm, spec.dir);
        } catch (e) {
          live.expectingExit = true;
          vm.kill();
          await vm.exited;
          record.desired = 'stopped';
          await this.#write(record);
          throw e;
        }
        return this.#finish(id, record);
      } finally {
        this.#transitions.delete(id);
      }
    });
  }

  /** Graceful power-off through the guest agent; QMP quit and then SIGKILL after the timeout. */
  stop(id: string, timeoutMs = this.#o.stopTimeoutMs): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const record = await this.#read(id);
      record.desired = 'stopped';
      await this.#write(record);
      const live = this.#live.get(id);
      if (!live) return this.#status(record);
      this.#transitions.set(id, 'stopping');
      live.expectingExit = true;
      try {
        const guest = await this.guest(id).catch(() => undefined);
        await guest?.shutdown().catch(() => {});
        if (!(await settlesWithin(live.vm.exited, timeoutMs))) {
          this.#o.log?.(`VM ${id} did not power off within ${timeoutMs} ms: quitting QEMU`);
          await live.vm.quit();
          if (!(await settlesWithin(live.vm.exited, 5_000))) live.vm.kill();
        }
        await live.vm.exited;
        await this.#settled(id);
        return this.#finish(id, await this.#read(id));
      } finally {
        this.#transitions.delete(id);
      }
    });
  }

  /** Hard stop: SIGKILL to QEMU. The data volume keeps what the guest had flushed. */
  kill(id: string): Promise<VmStatus> {
    return this.#locked(id, async () => {
      const record = await this.#read(id);
      record.desired = 'stopped';
      await this.#write(record);
      await this.#killLive(id);
      return this.#status(await this.#read(id));
    });
  }

  /** Kills the VM if it runs and removes every file and the cgroup it had. */
  destroy(id: string): Promise<void> {
    return this.#locked(id, async () => {
      const record = await this.#read(id);
      await this.#killLive(id);
      await this.#o.cgroups?.open(id).remove();
      // Before the directory: if the agent dies in between, the VM is still there to destroy again.
      if (this.#o.network) await this.#o.network.removeTap(record.network?.tap ?? tapName(id));
      await rm(this.dirOf(id), { recursive: true, force: true });
      if (record.network) {
        await this.syncNetwork().catch((e) => {
          // The VM is gone either way; its stale rules match no interface and go with the next sync.
          this.#o.log?.(`VM ${id} destroyed, but the firewall was not updated: ${(e as Error).message}`);
        });
      }
    });
  }

  /** SIGKILLs the VM's QEMU, if it runs, and waits until its exit is recorded. */
  async #killLive(id: string): Promise<void> {
    const live = this.#live.get(id);
    if (!live) return;
    live.expectingExit = true;
    live.vm.kill();
    await live.vm.exited;
    await this.#settled(id);
  }

  /** The guest agent client of a running VM (connected on first use, reconnected if lost). */
  async guest(id: string): Promise<GuestClient> {
    const live = this.#live.get(id);
    if (!live) {
      await this.#read(id);
      throw new WarrenError('VM_NOT_RUNNING', `VM ${id} is not running`);
    }
    if (live.guest && !live.guest.closed) return live.guest;
    live.guest = await GuestClient.connect(live.vm.transport, 10_000);
    return live.guest;
  }

  /** Lets go of all VMs without stopping them (they keep running for the next agent). */
  close(): void {
    for (const live of this.#live.values()) {
      live.guest?.close();
      live.vm.detach();
    }
    this.#live.clear();
  }

  #track(id: string, vm: RunningVm): Live {
    const live: Live = { vm, expectingExit: false };
    this.#live.set(id, live);
    void vm.exited.then(async (exit) => {
      if (this.#live.get(id) !== live) return;
      live.guest?.close();
      const record = await this.#read(id).catch(() => undefined);
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
    if (expected) record.desired = 'stopped';
    await this.#write(record).catch(() => {});
    if (record.desired !== 'running')
      await this.#o.cgroups
        ?.open(record.id)
        .remove()
        .catch(() => {});
  }

  async #waitForAgent(id: string, vm: RunningVm, dir: string): Promise<GuestClient> {
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
        await client.health(10_000);
        return client;
      } catch (e) {
        lastError = e;
        await sleep(100);
      }
    }
    const why = exited ? (await vm.exited).reason : `no answer within ${this.#o.bootTimeoutMs} ms`;
    throw new WarrenError(
      'VM_BOOT_FAILED',
      `VM ${id} did not become ready: ${why}; see ${join(dir, 'console.log')}`,
      {
        cause: lastError,
      },
    );
  }

  async #launchSpec(record: VmRecord, verify: boolean): Promise<VmLaunchSpec> {
    const dir = this.dirOf(record.id);
    // Every boot checks the image's digests first; a re-attach only needs the paths.
    const image = verify
      ? await this.#o.store.verify(record.imageId)
      : await this.#imagePaths(record.imageId);
    const cgroup = verify
      ? await this.#o.cgroups?.create(record.id, {
          cpus: record.cpus,
          memoryBytes: record.memoryMiB * 1024 * 1024 + VMM_OVERHEAD_BYTES,
          pidsMax: this.#o.pidsMax,
          ...(this.#o.ioLimit ? { io: this.#o.ioLimit } : {}),
        })
      : this.#o.cgroups?.open(record.id);
    return {
      id: record.id,
      dir,
      image,
      cpus: record.cpus,
      memoryMiB: record.memoryMiB,
      rootDisk: join(dir, 'root.qcow2'),
      dataDisk: join(dir, 'data.img'),
      accel: this.#o.accel,
      ...(record.jail ? { jail: record.jail } : {}),
      directIo: this.#o.ioLimit !== undefined,
      ...(cgroup ? { cgroup } : {}),
      ...(record.network && this.#o.network
        ? {
            network: {
              tap: record.network.tap,
              mac: record.network.mac,
              kernelArg: guestNetArg(record.network),
            },
          }
        : {}),
    };
  }

  async #imagePaths(imageId: string) {
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
    else if (live) state = 'running';
    else if (record.desired === 'running' && record.lastExit && !record.lastExit.graceful) state = 'crashed';
    else state = 'stopped';
    const status: VmStatus = {
      ...record,
      state,
      accelerator: this.#o.accel,
      ...(live ? { pid: live.vm.pid } : {}),
    };
    // With networking off the VM boots without a NIC, whatever link its record still holds.
    if (!this.#o.network) delete status.network;
    return status;
  }

  async #read(id: string): Promise<VmRecord> {
    const path = join(this.dirOf(id), 'vm.json');
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch {
      throw new WarrenError('VM_NOT_FOUND', `no VM ${id} on this host`);
    }
    return VmRecord.parse(JSON.parse(text));
  }

  async #write(record: VmRecord, dir = this.dirOf(record.id)): Promise<void> {
    const path = join(dir, 'vm.json');
    const tmp = `${path}.tmp`;
    await writeFile(tmp, JSON.stringify(record, null, 2), { mode: PRIVATE_FILE_MODE });
    await rename(tmp, path);
  }

  async #ids(): Promise<string[]> {
    const names = await readdir(this.#vmsDir).catch(() => []);
    return names.filter((n) => VmId.safeParse(n).success).sort();
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

/** A sparse raw file with an ext4 filesystem; the agent user (uid 1000) owns its root. */
async function createDataVolume(path: string, sizeMiB: number): Promise<void> {
  await run('mkfs.ext4', ['-q', '-F', '-L', 'workspace', '-E', 'root_owner=1000:1000', path, `${sizeMiB}M`], {
    errorCode: 'HOST_UNSUPPORTED',
  });
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
}

async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  const done = await Promise.race([p.then(() => true), timeout]);
  clearTimeout(timer);
  return done;
}
