/**
 * Backup and restore jobs of this host's VMs, run for the control plane (docs/architecture.md,
 * "Backups"): a request starts a job and answers at once; the control plane polls the job until
 * it ends. Jobs live in memory only, like the keys they were handed: an agent that restarts
 * knows none of them, and the control plane then asks the object store whether the backup's
 * manifest exists (a backup exists iff its manifest does).
 */
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type BackupKeyBuffers,
  CHUNK_SIZE,
  type Manifest,
  readManifest,
  restoreVolume,
  type VolumeSource,
  writeBackup,
} from '@warren/backup';
import type { ObjectStore } from '@warren/object-store';
import {
  type BackupJob,
  type BackupKeys,
  type BackupProgress,
  type BackupVolumeName,
  DATA_VOLUME_MOUNT,
  type FileSample,
  HostBackupRequest,
  HostRestoreRequest,
  parseOrThrow,
  WarrenError,
} from '@warren/protocol';
import { fileDigestsIsolated } from '../disk-changes/index.ts';
import { type BackupPoint, backupsUnsupported, type VmManager } from '../vm/vm-manager.ts';
import type { BackupMark } from '../vm/vm-records.ts';
import { layerFormat } from '../vmm/vm-disks.ts';
import { ChainThread } from './chain-thread.ts';

/** Finished jobs kept for the control plane to poll, at most this many and this long. */
const MAX_FINISHED_JOBS = 256;
const FINISHED_JOB_TTL_MS = 24 * 60 * 60_000;
/** A restore's file sample leaves out files larger than this: a drill checks files, not throughput. */
const SAMPLE_MAX_FILE_BYTES = 16 * 1024 * 1024;
/** How long reading a restore's file sample may take (at most MAX_DRILL_FILES files of the size above). */
const SAMPLE_TIMEOUT_MS = 5 * 60_000;

export interface BackupJobsOptions {
  vms: VmManager;
  store: ObjectStore;
  /** WARREN_BACKUP_FREEZE_TIMEOUT_MS */
  freezeTimeoutMs: number;
  /** WARREN_BACKUP_CONCURRENCY */
  concurrency: number;
  log?: (message: string) => void;
}

interface Entry {
  vmId: string;
  job: BackupJob;
  finishedAt?: number;
}

const NO_PROGRESS: BackupProgress = {
  bytesTotal: 0,
  bytesDone: 0,
  bytesTransferred: 0,
  chunksNew: 0,
  chunksReused: 0,
};

/** One disk of a backup: its frozen chain open in a thread, and what to read of it. */
interface OpenVolume {
  name: BackupVolumeName;
  thread: ChainThread;
  /** Chunk indexes to read, or undefined for all; `reason` says why all. */
  changed?: number[];
  reason?: string;
  /** Chunks of the root disk no layer of the VM holds a cluster of: the image's own bytes. */
  tenantChunks?: Set<number> | null;
}

export class BackupJobs {
  readonly #o: BackupJobsOptions;
  readonly #jobs = new Map<string, Entry>();

  constructor(options: BackupJobsOptions) {
    this.#o = options;
  }

  /** The job, as the control plane polls it; `check` refuses VMs the caller may not name. */
  get(id: string, check: (vmId: string) => void = () => {}): BackupJob {
    this.#prune();
    const entry = this.#jobs.get(id);
    if (entry) check(entry.vmId);
    if (!entry)
      throw new WarrenError('NOT_FOUND', `this host has no backup job ${id} (it may have restarted since)`);
    return structuredClone(entry.job);
  }

  /** Starts a backup of VM `vmId`; the same request again while it runs (or after) answers the same job. */
  async startBackup(vmId: string, request: HostBackupRequest): Promise<BackupJob> {
    const req = parseOrThrow(HostBackupRequest, request);
    const known = this.#known(req.id, vmId, 'backup');
    if (known) return known;
    const vm = await this.#o.vms.get(vmId);
    // Said at once when it is already clear; backupPoint checks again under the VM's lock.
    const { vmm } = this.#o.vms;
    if (vm.state === 'running' && !vmm.capabilities.diskSnapshots) throw backupsUnsupported(vmm.name, true);
    // The same request may have arrived meanwhile.
    const raced = this.#known(req.id, vmId, 'backup');
    if (raced) return raced;
    const entry = this.#add(req.id, vmId, 'backup');
    const keys = keyBuffers(req.keys);
    void this.#run(entry, keys, () => this.#backup(entry, req, keys));
    return structuredClone(entry.job);
  }

  /** Starts a restore of backup `request.backup` into VM `vmId` (its data volume). */
  async startRestore(vmId: string, request: HostRestoreRequest): Promise<BackupJob> {
    const req = parseOrThrow(HostRestoreRequest, request);
    const known = this.#known(req.job, vmId, 'restore');
    if (known) return known;
    await this.#o.vms.get(vmId);
    const raced = this.#known(req.job, vmId, 'restore');
    if (raced) return raced;
    const entry = this.#add(req.job, vmId, 'restore');
    const keys = keyBuffers(req.keys);
    void this.#run(entry, keys, () => this.#restore(entry, req, keys));
    return structuredClone(entry.job);
  }

  #known(id: string, vmId: string, kind: BackupJob['kind']): BackupJob | undefined {
    this.#prune();
    const entry = this.#jobs.get(id);
    if (!entry) return undefined;
    if (entry.vmId !== vmId || entry.job.kind !== kind)
      throw new WarrenError('CONFLICT', `job ${id} on this host is a ${entry.job.kind} of VM ${entry.vmId}`);
    return structuredClone(entry.job);
  }

  #add(id: string, vmId: string, kind: BackupJob['kind']): Entry {
    for (const e of this.#jobs.values())
      if (e.vmId === vmId && e.job.state === 'running')
        throw new WarrenError(
          'CONFLICT',
          `VM ${vmId} has a ${e.job.kind} running (job ${e.job.id}); wait for it to end`,
        );
    const entry: Entry = {
      vmId,
      job: { id, kind, state: 'running', progress: { ...NO_PROGRESS }, result: null, error: null },
    };
    this.#jobs.set(id, entry);
    return entry;
  }

  async #run(entry: Entry, keys: BackupKeyBuffers, work: () => Promise<BackupJob['result']>): Promise<void> {
    try {
      entry.job.result = await work();
      entry.job.state = 'succeeded';
    } catch (e) {
      const err =
        e instanceof WarrenError ? e : new WarrenError('INTERNAL', (e as Error)?.message ?? String(e));
      entry.job.state = 'failed';
      entry.job.error = { code: err.code, message: err.message.slice(0, 4096) };
      this.#o.log?.(
        `${entry.job.kind} job ${entry.job.id} of VM ${entry.vmId} failed: ${err.code}: ${err.message}`,
      );
    } finally {
      // The keys were the control plane's for this one job: nothing of them stays.
      keys.tenant.fill(0);
      keys.image?.fill(0);
      entry.finishedAt = Date.now();
    }
  }

  async #backup(entry: Entry, req: HostBackupRequest, keys: BackupKeyBuffers): Promise<BackupJob['result']> {
    const started = performance.now();
    const { store } = this.#o;
    let previous: Manifest | undefined;
    let unreadable: string | undefined;
    if (req.previous) {
      try {
        previous = await readManifest(store, keys.tenant, req.previous);
      } catch (e) {
        if (e instanceof WarrenError && e.code === 'BACKUP_KEY_REJECTED') throw e;
        unreadable = `the previous backup ${req.previous} could not be read (${(e as WarrenError).code ?? 'error'})`;
      }
    }
    const includeRoot = req.includeRoot ?? false;
    const { point, volumes } = await this.#o.vms.backupPoint(
      entry.vmId,
      { includeRoot, freezeTimeoutMs: this.#o.freezeTimeoutMs },
      async (point) => ({ point, volumes: await openVolumes(point, includeRoot) }),
    );
    try {
      for (const v of volumes) {
        const why = unreadable ?? (await whatChanged(v, point, req.previous, previous));
        if (why !== undefined) v.reason = why;
      }
      const sources: VolumeSource[] = volumes.map((v) => ({
        name: v.name,
        size: v.thread.size,
        read: (offset, length) => v.thread.read(offset, length),
        ...(v.changed ? { changed: v.changed } : {}),
        ...(v.tenantChunks && keys.image ? { imageChunk: (i: number) => !v.tenantChunks!.has(i) } : {}),
      }));
      const result = await writeBackup({
        store,
        keys,
        id: req.id,
        pointInTime: point.pointInTime,
        metadata: req.metadata,
        volumes: sources,
        ...(previous ? { previous } : {}),
        concurrency: this.#o.concurrency,
        onProgress: (p) => {
          entry.job.progress = p;
        },
      });
      entry.job.progress = {
        ...entry.job.progress,
        chunksNew: result.chunksNew,
        chunksReused: result.chunksReused,
      };
      const mark: BackupMark = {
        id: req.id,
        chains: { data: point.frozen.data, ...(includeRoot ? { root: point.frozen.root } : {}) },
      };
      await this.#o.vms.setBackupMark(entry.vmId, mark);
      // The backup is complete; a merge that fails costs only a longer chain, not the backup.
      await this.#o.vms
        .mergeBackupLayers(entry.vmId, req.id, mark.chains)
        .catch((e: Error) =>
          this.#o.log?.(`VM ${entry.vmId}: merging the layers backup ${req.id} froze failed: ${e.message}`),
        );
      const full = volumes.find((v) => !v.changed);
      return {
        pointInTime: point.pointInTime,
        volumes: result.manifest.volumes.map((v) => ({
          name: v.name,
          sizeBytes: v.size,
          chunks: v.chunks.filter((c) => c !== null).length,
        })),
        storedBytes: result.storedBytes,
        mode: full ? 'full' : 'incremental',
        ...(full ? { reason: `${full.name} disk: ${full.reason ?? 'every chunk read'}` } : {}),
        durationMs: performance.now() - started,
      };
    } finally {
      for (const v of volumes) await v.thread.close();
    }
  }

  async #restore(
    entry: Entry,
    req: HostRestoreRequest,
    keys: BackupKeyBuffers,
  ): Promise<BackupJob['result']> {
    const started = performance.now();
    const { store } = this.#o;
    // Read (and checked against the key) before the VM is touched: a wrong key or a missing
    // backup costs the tenant nothing.
    const manifest = await readManifest(store, keys.tenant, req.backup);
    if (!manifest.volumes.some((v) => v.name === 'data'))
      throw new WarrenError(
        'BACKUP_CORRUPT',
        `backup ${req.backup} has no data volume (manifests/${req.backup})`,
      );
    const volumes = manifest.volumes;
    let sample: FileSample | undefined;
    // Progress over all the volumes: what the ones already written added, plus the current one's.
    const done = { ...NO_PROGRESS, bytesTotal: volumes.reduce((n, v) => n + v.size, 0) };
    entry.job.progress = { ...done };
    await this.#o.vms.replaceVolumes(
      entry.vmId,
      req.job,
      volumes.map((v) => v.name),
      async (disk, path) => {
        const volume = volumes.find((v) => v.name === disk)!;
        const file = await open(path, 'w', 0o600);
        try {
          // Sparse: chunks of zeros are holes, never written.
          await file.truncate(volume.size);
          const r = await restoreVolume({
            store,
            keys,
            manifest,
            backupId: req.backup,
            volume: disk,
            write: async (offset, buf) => {
              await file.write(buf, 0, buf.length, offset);
            },
            concurrency: this.#o.concurrency,
            onProgress: (p) => {
              entry.job.progress = {
                ...done,
                bytesDone: done.bytesDone + p.bytesDone,
                bytesTransferred: done.bytesTransferred + p.bytesTransferred,
              };
            },
          });
          await file.sync();
          // Read before the VM starts, so the guest has had no chance to change the files.
          if (disk === 'data' && req.sampleFiles) sample = await sampleFiles(path, req.sampleFiles);
          done.bytesDone += volume.size;
          done.bytesTransferred += r.bytesTransferred;
          entry.job.progress = { ...done };
        } finally {
          await file.close();
        }
        return volume.size;
      },
      req.start ?? 'as-before',
    );
    return {
      pointInTime: manifest.pointInTime,
      volumes: volumes.map((v) => ({
        name: v.name,
        sizeBytes: v.size,
        chunks: v.chunks.filter((c) => c !== null).length,
      })),
      storedBytes: 0,
      mode: 'full',
      durationMs: performance.now() - started,
      ...(sample ? { sample } : {}),
    };
  }

  /** Forgets finished jobs past their time, and the oldest beyond the count. */
  #prune(): void {
    const now = Date.now();
    const finished = [...this.#jobs.values()].filter((e) => e.finishedAt !== undefined);
    const excess = finished.length - MAX_FINISHED_JOBS;
    finished.forEach((e, i) => {
      if (i < excess || now - e.finishedAt! > FINISHED_JOB_TTL_MS) this.#jobs.delete(e.job.id);
    });
  }
}

/**
 * The digests of up to `max` files of the data volume just written to `path`, read by the host's
 * ext4 reader in its isolated worker. A filesystem it cannot read (the guest's to corrupt) is
 * the drill's failure to report, not the restore's.
 */
async function sampleFiles(path: string, max: number): Promise<FileSample> {
  try {
    const files = await fileDigestsIsolated(
      { base: path, baseFormat: 'raw', layers: [] },
      {
        mountPoint: DATA_VOLUME_MOUNT,
        max,
        maxFileBytes: SAMPLE_MAX_FILE_BYTES,
        timeoutMs: SAMPLE_TIMEOUT_MS,
      },
    );
    return { files };
  } catch (e) {
    return { files: [], error: (e instanceof Error ? e.message : String(e)).slice(0, 2000) };
  }
}

function keyBuffers(keys: BackupKeys): BackupKeyBuffers {
  return {
    tenant: Buffer.from(keys.tenant, 'base64'),
    ...(keys.image ? { image: Buffer.from(keys.image, 'base64') } : {}),
  };
}

/**
 * Opens the frozen chains in threads of their own. Each disk's size as the top layer claims it
 * must be the size the host made it (the data volume's raw base, the image's rootfs): the
 * layers' headers are written by a QEMU the guest may control.
 */
async function openVolumes(point: BackupPoint, includeRoot: boolean): Promise<OpenVolume[]> {
  const out: OpenVolume[] = [];
  try {
    const data = point.frozen.data.map((l) => join(point.dir, l));
    out.push({
      name: 'data',
      thread: await ChainThread.open({ base: data[0]!, baseFormat: 'raw', layers: data.slice(1) }),
    });
    await expectSize(out[0]!.thread, data[0]!, 'data');
    if (includeRoot) {
      const files = point.frozen.root.map((l) => join(point.dir, l));
      // A root disk sits on the image's rootfs, unless a restore made it a raw file of its own:
      // then every chunk of it is the tenant's (its bytes no longer show what is the image's).
      const own = layerFormat(point.frozen.root[0]!) === 'raw';
      const base = own ? files[0]! : point.rootfsPath;
      const thread = await ChainThread.open({
        base,
        baseFormat: 'raw',
        layers: own ? files.slice(1) : files,
      });
      out.push({ name: 'root', thread });
      await expectSize(thread, base, 'root');
      if (!own) {
        const tenant = await thread.allocatedChunks(0, CHUNK_SIZE);
        out[1]!.tenantChunks = tenant && new Set(tenant);
      }
    }
    return out;
  } catch (e) {
    for (const v of out) await v.thread.close();
    throw e;
  }
}

async function expectSize(thread: ChainThread, base: string, disk: string): Promise<void> {
  const size = (await stat(base)).size;
  if (thread.size !== size)
    throw new WarrenError(
      'INTERNAL',
      `the ${disk} disk's top layer claims ${thread.size} bytes where its base has ${size}: refusing to back it up`,
    );
}

/**
 * Sets `v.changed` when only some chunks need reading: the previous backup is this host's
 * last (the mark) and its frozen chain is still the bottom of this one. Otherwise returns why
 * every chunk is read.
 */
async function whatChanged(
  v: OpenVolume,
  point: BackupPoint,
  previousId: string | undefined,
  previous: Manifest | undefined,
): Promise<string | undefined> {
  if (!previousId || !previous) return 'no previous backup';
  const mark = point.record.backupMark;
  if (!mark || mark.id !== previousId)
    return `this host's last backup of the VM is ${mark?.id ?? 'none'}, not the previous one (${previousId})`;
  const below = mark.chains[v.name];
  if (!below) return 'the previous backup did not hold this disk';
  const chain = point.frozen[v.name];
  if (below.length > chain.length || below.some((layer, i) => chain[i] !== layer))
    return 'the disk was reverted or restored since the previous backup';
  const before = previous.volumes.find((p) => p.name === v.name);
  if (!before || before.size !== v.thread.size) return 'the disk changed size since the previous backup';
  // A chain that starts with a raw file reads it as its base (the data disk, a restored root
  // disk); a root disk over its image has qcow2 layers only.
  const fromLayer = layerFormat(below[0]!) === 'raw' ? below.length - 1 : below.length;
  const changed = await v.thread.allocatedChunks(fromLayer, CHUNK_SIZE);
  if (!changed) return 'too many changed clusters to list';
  v.changed = changed;
  return undefined;
}
