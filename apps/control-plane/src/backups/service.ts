import { imageKey, manifestObjectKey, newKey, unwrapTenantKey, wrapTenantKey } from '@warren/backup';
import type { ObjectStore } from '@warren/object-store';
import {
  type Backup,
  BackupJob,
  type BackupMetadata,
  type BackupProgress,
  type BackupResult,
  type ErrorSummary,
  type HostBackupRequest,
  type HostRestoreRequest,
  isErrorCode,
  type TenantOperationResponse,
  type VerifyResult,
  vmIdOfTenant,
  WarrenError,
} from '@warren/protocol';
import type { AgentClient } from '../agents/agent-client.ts';
import { isUniqueViolation, toWarrenError } from '../api/errors.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { HostService } from '../hosts/service.ts';
import { newId, now } from '../ids.ts';
import type { BackupsTable, HostsTable, OperationsTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import type { TenantLocks } from '../tenants/concurrency.ts';
import type { TenantService } from '../tenants/service.ts';
import { operationView } from '../tenants/view.ts';
import { BackupDrills } from './drill.ts';
import type { BackupFormat } from './format.ts';
import { BackupGate } from './gate.ts';
import { BackupSchedule } from './schedule.ts';
import { backupView, createRequestOf, instant, metadataOf, newBackupId, progressOf } from './view.ts';

/** A call to a host agent that only starts or polls a job: quick, or the host is in trouble. */
const HOST_CALL_MS = 30_000;

type Trigger = 'manual' | 'scheduled';

/** How a restore's host job ended: its error, or its result (a drill's file sample in it). */
export type RestoreEnd = (error: ErrorSummary | null, result: BackupResult | null) => void;

export interface BackupServiceDeps {
  db: Db;
  config: ControlPlaneConfig;
  hosts: HostService;
  agents: AgentClient;
  tenants: TenantService;
  locks: TenantLocks;
  store: ObjectStore;
  format: BackupFormat;
  masterKey: Buffer;
  /** What image keys are derived from (secrets/rotate.ts imageSeed); the master key when absent. */
  imageSeed?: Buffer;
  log: (m: string) => void;
  /** Told after a restore operation's progress or end was written (the event stream). */
  onOperationChange?: (tenantId: string) => void;
}

/**
 * Backups of tenants (the catalog, keys, jobs on host agents), restores, the schedule,
 * retention and GC.
 *
 * - A restore holds its tenant's lock (TenantLocks) from its start to its job's end, so it never
 *   interleaves with a snapshot, a revert, a session step, a backup or another restore of the
 *   tenant: those are refused with CONFLICT meanwhile. A backup holds the lock only while it
 *   starts (the host orders its point in time and merge with the VM's other steps; a long
 *   backup must not delay a session's end and the removal of its credentials); one backup runs
 *   per tenant (the catalog's unique index), and a restore is refused while one runs.
 * - GC and backups exclude each other (BackupGate): GC runs only when no backup is running
 *   (in this process, or as a `running` row left by a previous one and not yet reconciled), and
 *   no backup starts while GC runs, so a backup never reuses a chunk GC is deleting.
 * - A backup exists iff its manifest object exists: when a host does not know a job any more
 *   (it restarted) or the job outlives WARREN_BACKUP_JOB_TIMEOUT_MS, the manifest decides.
 */
export class BackupService {
  readonly #d: BackupServiceDeps;
  readonly gate = new BackupGate();
  /** Tenants with a verify running (one each). */
  readonly #verifying = new Set<string>();
  /** Backups a restore or verify reads right now: not deleted meanwhile. */
  readonly #reading = new Map<string, number>();
  /** Jobs being followed, so close() can stop them and tests can wait for them. */
  readonly #jobs = new Set<Promise<void>>();
  #closed = false;

  /** Policies, the scheduler's pass and retention (schedule.ts); tests drive `schedule.tick(at)`. */
  readonly schedule: BackupSchedule;

  /** Restore drills (drill.ts). */
  readonly drills: BackupDrills;

  constructor(deps: BackupServiceDeps) {
    this.#d = deps;
    this.schedule = new BackupSchedule({ ...deps, backups: this });
    this.drills = new BackupDrills({
      ...deps,
      backups: this,
      follow: (job) => this.#follow(job),
      sleep: (ms) => this.#sleep(ms),
      closed: () => this.#closed,
    });
  }

  // ---- the catalog ----

  async list(tenant: Pick<TenantsTable, 'id'>): Promise<Backup[]> {
    const rows = await this.#d.db
      .selectFrom('backups')
      .selectAll()
      .where('tenant_id', '=', tenant.id)
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .execute();
    return rows.map(backupView);
  }

  async get(tenant: Pick<TenantsTable, 'id' | 'name'>, id: string): Promise<Backup> {
    return backupView(await this.#row(tenant, id));
  }

  async #row(tenant: Pick<TenantsTable, 'id' | 'name'>, id: string): Promise<BackupsTable> {
    const row = await this.#d.db
      .selectFrom('backups')
      .selectAll()
      .where('tenant_id', '=', tenant.id)
      .where('id', '=', id)
      .executeTakeFirst();
    // Another tenant's backup is as absent as one that never was.
    if (!row) throw new WarrenError('NOT_FOUND', `tenant ${tenant.name} has no backup ${id}`);
    return row;
  }

  // ---- keys ----

  /** The tenant's backup key: made and stored wrapped on its first backup, unwrapped per job. */
  async #tenantKey(tenant: Pick<TenantsTable, 'id'>, create: boolean): Promise<Buffer> {
    const row = await this.#d.db
      .selectFrom('tenant_keys')
      .select('wrapped')
      .where('tenant_id', '=', tenant.id)
      .executeTakeFirst();
    if (row) return unwrapTenantKey(this.#d.masterKey, tenant.id, row.wrapped);
    if (!create) {
      throw new WarrenError(
        'BACKUP_KEY_REJECTED',
        `tenant ${tenant.id} has no backup key (it has never been backed up)`,
      );
    }
    const key = newKey();
    try {
      await this.#d.db
        .insertInto('tenant_keys')
        .values({
          tenant_id: tenant.id,
          wrapped: wrapTenantKey(this.#d.masterKey, tenant.id, key),
          created_at: now(),
        })
        .execute();
    } catch (e) {
      // Two first backups at once (another process): the one stored wins.
      if (!isUniqueViolation(e)) throw e;
      return this.#tenantKey(tenant, false);
    }
    return key;
  }

  /**
   * The image's key. The image id is the sha256 of the image's manifest, which names its root
   * disk's digest: a digest of the image, so it serves as `imageKey`'s digest.
   */
  #imageKey(imageId: string): Buffer {
    return imageKey(this.#d.imageSeed ?? this.#d.masterKey, imageId);
  }

  #keys(tenantKey: Buffer, imageId: string): HostBackupRequest['keys'] {
    return { tenant: tenantKey.toString('base64'), image: this.#imageKey(imageId).toString('base64') };
  }

  // ---- backups ----

  /**
   * Starts a backup of the tenant (running or stopped, on a live host): the row `running`, then
   * the host's job, which this process follows until it ends. Answers at once with the row.
   */
  async create(
    tenant: TenantsTable,
    request: { includeRoot?: boolean | undefined },
    trigger: Trigger = 'manual',
  ): Promise<Backup> {
    this.gate.refuseWhileGc();
    // Held while the backup starts only: the host orders a backup's point in time and merge
    // with snapshots, reverts and stops of the VM itself, and a backup running for hours must
    // not hold up a session's end (its credentials would stay in the guest past its expiry).
    const release = this.#d.locks.hold(tenant, 'backup start');
    let started = false;
    try {
      const cur = await this.#fresh(tenant);
      if (cur.desired_state === 'absent')
        throw new WarrenError('CONFLICT', `tenant ${cur.name} is being deleted`);
      // A restore holds the tenant's lock for its whole job, so none runs now; one this process
      // lost track of (a restart) is followed again by reconcile and holds it too.
      const { n } = await this.#d.db
        .selectFrom('backups')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('tenant_id', '=', cur.id)
        .executeTakeFirstOrThrow();
      const max = this.#d.config.tenantMaxBackups;
      if (Number(n) >= max)
        throw new WarrenError(
          'QUOTA_EXCEEDED',
          `tenant ${cur.name} holds ${n} backups, its limit (WARREN_TENANT_MAX_BACKUPS = ${max}); delete some (\`warren tenant backup delete\`) or set a backup policy that prunes them`,
          { details: { limit: 'platform.tenantMaxBackups', value: max } },
        );
      const host = await this.#d.hosts.liveHostOf(cur);
      const key = await this.#tenantKey(cur, true);
      const previous = await this.#d.db
        .selectFrom('backups')
        .select('id')
        .where('tenant_id', '=', cur.id)
        .where('state', '=', 'complete')
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc')
        .executeTakeFirst();
      const metadata = metadataOf(cur);
      const row: BackupsTable = {
        id: newBackupId(),
        tenant_id: cur.id,
        tenant_name: cur.name,
        state: 'running',
        trigger,
        include_root: request.includeRoot ? 1 : 0,
        host_id: host.id,
        created_at: now(),
        completed_at: null,
        point_in_time: null,
        size_bytes: 0,
        stored_bytes: 0,
        mode: null,
        progress: null,
        metadata: JSON.stringify(metadata),
        error_code: null,
        error_message: null,
        drill_state: null,
        drill_at: null,
        drill_files: null,
        drill_error_code: null,
        drill_error_message: null,
        drill_tenant: null,
      };
      this.gate.backupStarted();
      started = true;
      try {
        await this.#d.db.insertInto('backups').values(row).execute();
      } catch (e) {
        if (isUniqueViolation(e))
          throw new WarrenError('CONFLICT', `tenant ${cur.name} already has a backup running; wait for it`);
        throw e;
      }
      const body: HostBackupRequest = {
        id: row.id,
        keys: this.#keys(key, cur.image_id),
        includeRoot: row.include_root === 1,
        metadata,
        ...(previous ? { previous: previous.id } : {}),
      };
      try {
        await this.#post(host, `/v1/vms/${vmIdOfTenant(cur.id)}/backups`, body);
      } catch (e) {
        await this.#finishBackup(row, { error: toWarrenError(e) });
        throw e;
      }
      this.#follow(this.#followBackup(row, host, () => this.gate.backupEnded()));
      return backupView(row);
    } catch (e) {
      if (started) this.gate.backupEnded();
      throw e;
    } finally {
      release();
    }
  }

  /** Polls the host's job until it ends; a job the host lost, or one past its deadline, is decided by its manifest. */
  async #followBackup(row: BackupsTable, host: HostsTable | undefined, done: () => void): Promise<void> {
    try {
      const deadline = Date.parse(row.created_at) + this.#d.config.backupJobTimeoutMs;
      while (!this.#closed) {
        const h = host ?? (await this.#hostById(row.host_id));
        let job: BackupJob | 'lost' | undefined;
        try {
          job = h ? await this.#job(h, row.id) : 'lost';
        } catch (e) {
          // A host that does not answer may come back: keep asking until the deadline.
          this.#d.log(`backup ${row.id}: polling host ${h?.name}: ${toWarrenError(e).message}`);
        }
        const lost =
          job === 'lost'
            ? 'its host does not know the job (it restarted or left)'
            : Date.now() > deadline
              ? `not finished within WARREN_BACKUP_JOB_TIMEOUT_MS (${this.#d.config.backupJobTimeoutMs} ms)`
              : undefined;
        if (lost) {
          try {
            return await this.#decideByManifest(row, lost, job === 'lost' ? 'HOST_UNAVAILABLE' : 'TIMEOUT');
          } catch (e) {
            // The object store did not answer: nothing is known yet, ask again.
            this.#d.log(`backup ${row.id}: reading its manifest: ${toWarrenError(e).message}`);
            await this.#sleep(this.#d.config.backupPollMs);
            continue;
          }
        }
        if (job === 'lost') return;
        if (job?.state === 'succeeded' && !job.result) {
          // A host that says done but not what: the manifest says it.
          return await this.#decideByManifest(row, 'its host reported no result', 'HOST_UNAVAILABLE');
        }
        if (job?.state === 'succeeded' && job.result) {
          const r = job.result;
          await this.#finishBackup(row, {
            complete: {
              pointInTime: instant(r.pointInTime, row.created_at),
              sizeBytes: r.volumes.reduce((n, v) => n + v.sizeBytes, 0),
              storedBytes: r.storedBytes,
              mode: r.mode,
              progress: job.progress,
            },
          });
          return;
        }
        if (job && job.state === 'failed') {
          return await this.#finishBackup(row, {
            error: job.error ?? { code: 'INTERNAL', message: 'the host reported a failure' },
            progress: job.progress,
          });
        }
        if (job) await this.#progress('backups', row.id, job.progress);
        await this.#sleep(this.#d.config.backupPollMs);
      }
    } catch (e) {
      this.#d.log(`backup ${row.id}: ${toWarrenError(e).message}`);
    } finally {
      done();
    }
  }

  /**
   * The manifest is the commit point: it exists, the backup is complete (as the manifest says);
   * absent, failed. One that exists but does not open (damaged, another key) fails the backup
   * with that error. Throws only when the store does not answer (the caller asks again).
   */
  async #decideByManifest(row: BackupsTable, why: string, code: string): Promise<void> {
    let manifest: Awaited<ReturnType<BackupFormat['readManifest']>>;
    try {
      const key = await this.#tenantKey({ id: row.tenant_id }, false);
      manifest = await this.#d.format.readManifest(this.#d.store, key, row.id);
    } catch (e) {
      const err = toWarrenError(e);
      if (err.code !== 'BACKUP_CORRUPT' && err.code !== 'BACKUP_KEY_REJECTED') throw e;
      return this.#finishBackup(row, { error: { code: err.code, message: `${why}; ${err.message}` } });
    }
    if (manifest) {
      this.#d.log(`backup ${row.id}: ${why}; its manifest exists, so it is complete`);
      await this.#finishBackup(row, {
        complete: {
          pointInTime: instant(manifest.pointInTime, row.created_at),
          sizeBytes: manifest.volumes.reduce((n, v) => n + v.size, 0),
          storedBytes: 0,
          mode: null,
          progress: null,
        },
      });
    } else {
      await this.#finishBackup(row, {
        error: {
          code,
          message: `backup ${row.id}: ${why}, and it wrote no manifest; its partial objects go at the next GC`,
        },
      });
    }
  }

  async #finishBackup(
    row: BackupsTable,
    end:
      | {
          complete: {
            pointInTime: string;
            sizeBytes: number;
            storedBytes: number;
            mode: string | null;
            progress: BackupProgress | null;
          };
        }
      | { error: ErrorSummary; progress?: BackupProgress },
  ): Promise<void> {
    const t = now();
    const set =
      'complete' in end
        ? {
            state: 'complete',
            completed_at: t,
            point_in_time: end.complete.pointInTime,
            size_bytes: end.complete.sizeBytes,
            stored_bytes: end.complete.storedBytes,
            mode: end.complete.mode,
            ...(end.complete.progress ? { progress: JSON.stringify(end.complete.progress) } : {}),
          }
        : {
            state: 'failed',
            completed_at: t,
            error_code: end.error.code.slice(0, 64),
            error_message: end.error.message.slice(0, 4096),
            ...(end.progress ? { progress: JSON.stringify(end.progress) } : {}),
          };
    // Only a running row ends: a tenant deleted meanwhile took its rows with it.
    await this.#d.db
      .updateTable('backups')
      .set(set)
      .where('id', '=', row.id)
      .where('state', '=', 'running')
      .execute();
  }

  /** Deletes a backup: its catalog row, then its manifest object (its chunks go at the next GC). */
  async delete(tenant: TenantsTable, id: string): Promise<void> {
    const row = await this.#row(tenant, id);
    if (row.state === 'running')
      throw new WarrenError('CONFLICT', `backup ${id} is running; wait for it to end`);
    if (this.#reading.has(id))
      throw new WarrenError(
        'CONFLICT',
        `backup ${id} is being restored or verified; retry when that has finished`,
      );
    await this.#d.db.deleteFrom('backups').where('id', '=', id).execute();
    // A manifest left behind (the store failed) is not in the catalog, so GC removes it.
    await this.#d.store
      .delete(manifestObjectKey(id))
      .catch((e) => this.#d.log(`backup ${id}: deleting its manifest: ${e}`));
  }

  /** Reads the manifest and every chunk of a complete backup back and checks them. */
  async verify(tenant: TenantsTable, id: string): Promise<VerifyResult> {
    const row = await this.#row(tenant, id);
    if (row.state !== 'complete')
      throw new WarrenError('CONFLICT', `backup ${id} is ${row.state}, not complete`);
    const metadata = JSON.parse(row.metadata) as BackupMetadata;
    const tenantKey = await this.#tenantKey(tenant, false);
    // A verify reads the whole backup through this process: one per tenant at a time, so a
    // tenant cannot put the control plane's bandwidth and CPU to work many times over.
    if (this.#verifying.has(tenant.id))
      throw new WarrenError(
        'CONFLICT',
        `a verify of tenant ${tenant.name}'s backups is running; retry when it has finished`,
      );
    this.#verifying.add(tenant.id);
    try {
      return await this.#reading_(id, () =>
        this.#d.format.verify(
          this.#d.store,
          { tenant: tenantKey, image: this.#imageKey(metadata.imageId) },
          id,
        ),
      );
    } finally {
      this.#verifying.delete(tenant.id);
    }
  }

  async #reading_<T>(id: string, f: () => Promise<T>): Promise<T> {
    this.#reading.set(id, (this.#reading.get(id) ?? 0) + 1);
    try {
      return await f();
    } finally {
      const n = (this.#reading.get(id) ?? 1) - 1;
      if (n > 0) this.#reading.set(id, n);
      else this.#reading.delete(id);
    }
  }

  // ---- restores ----

  /**
   * Restores a complete backup into its own tenant (its volumes replaced, the VM restarted by
   * its host) or, with `newTenant`, into a new tenant made like the backup's (image, resources,
   * network), placed by the scheduler on any healthy host with the image. Answers at once with
   * the target tenant and the restore operation, which ends when the host's job does.
   * `drill` (restore drills, drill.ts): the host reads back a sample of the files it wrote, and
   * `onEnd` hears how the job ended, with the host's result.
   */
  async restore(
    tenant: TenantsTable,
    id: string,
    newTenant: string | undefined,
    drill?: { sampleFiles: number; onEnd: RestoreEnd },
  ): Promise<TenantOperationResponse> {
    const row = await this.#row(tenant, id);
    if (row.state !== 'complete')
      throw new WarrenError('CONFLICT', `backup ${id} is ${row.state}, not complete`);
    const key = await this.#tenantKey(tenant, false);
    const metadata = JSON.parse(row.metadata) as BackupMetadata;
    let target: TenantsTable;
    let release: () => void;
    /** The target's VM is made anew (a new tenant, or a lost one placed on another host). */
    let placed = newTenant !== undefined;
    if (newTenant === undefined) {
      release = this.#d.locks.hold(tenant, 'restore');
      try {
        target = await this.#fresh(tenant);
        if (target.desired_state === 'absent')
          throw new WarrenError('CONFLICT', `tenant ${target.name} is being deleted`);
        if (target.state === 'lost') {
          // Its host was removed: the scheduler places it on another one, where the restore
          // fills the fresh VM's volumes, exactly as for a restore into a new tenant.
          target = await this.#d.tenants.relocate(target);
          placed = true;
        }
        // Its volumes are not replaced under a backup reading them (rows are written under the lock).
        const running = await this.#d.db
          .selectFrom('backups')
          .select('id')
          .where('tenant_id', '=', target.id)
          .where('state', '=', 'running')
          .executeTakeFirst();
        if (running)
          throw new WarrenError(
            'CONFLICT',
            `tenant ${target.name} is being backed up (${running.id}); restore when it has finished`,
          );
        await this.#d.hosts.liveHostOf(target);
      } catch (e) {
        release();
        throw e;
      }
    } else {
      // A drill's scratch guest gets no network: the workspace it boots may start the tenant's own programs.
      const created = await this.#d.tenants.create({
        ...createRequestOf(newTenant, metadata, tenant),
        ...(drill ? { network: { egress: 'none' as const } } : {}),
      });
      target = await this.#fresh({ id: created.tenant.id, name: newTenant });
      release = this.#d.locks.hold(target, 'restore');
    }
    const t = now();
    const op: OperationsTable = {
      id: newId('op'),
      kind: 'restore',
      tenant_id: target.id,
      tenant_name: target.name,
      generation: target.generation,
      status: 'running',
      error_code: null,
      error_message: null,
      created_at: t,
      updated_at: t,
      job: newBackupId(),
      progress: null,
    };
    await this.#d.db.insertInto('operations').values(op).execute();
    this.gate.restoreStarted();
    this.#reading.set(id, (this.#reading.get(id) ?? 0) + 1);
    const done = () => {
      this.gate.restoreEnded();
      const n = (this.#reading.get(id) ?? 1) - 1;
      if (n > 0) this.#reading.set(id, n);
      else this.#reading.delete(id);
      release();
    };
    const body: HostRestoreRequest = {
      job: op.job!,
      backup: id,
      keys: this.#keys(key, metadata.imageId),
      start: placed ? 'always' : 'as-before',
      ...(drill ? { sampleFiles: drill.sampleFiles } : {}),
    };
    this.#follow(this.#runRestore(op, target, body, placed, done, drill?.onEnd));
    return { tenant: await this.#d.tenants.view(target), operation: operationView(op) };
  }

  async #runRestore(
    op: OperationsTable,
    target: TenantsTable,
    body: HostRestoreRequest | undefined,
    fresh: boolean,
    done: () => void,
    onEnd: RestoreEnd = () => {},
  ): Promise<void> {
    let ended: { error: ErrorSummary | null; result: BackupResult | null } = {
      error: { code: 'INTERNAL', message: 'the control plane stopped before the restore ended' },
      result: null,
    };
    const finish = async (
      error: ErrorSummary | null,
      progress?: BackupProgress,
      result?: BackupResult | null,
    ) => {
      ended = { error, result: result ?? null };
      await this.#finishOp(op, error, progress);
    };
    try {
      const deadline = Date.parse(op.created_at) + this.#d.config.backupJobTimeoutMs;
      let host: HostsTable | undefined;
      if (body) {
        // A new tenant's VM must exist on its host before its volumes can be replaced.
        if (fresh)
          await this.#untilCreated(
            target,
            Math.min(deadline, Date.parse(op.created_at) + this.#d.config.operationTimeoutMs),
          );
        const cur = await this.#fresh(target);
        host = await this.#d.hosts.liveHostOf(cur);
        await this.#post(host, `/v1/vms/${vmIdOfTenant(target.id)}/restore`, body);
      }
      while (!this.#closed) {
        const h = host ?? (await this.#hostById((await this.#fresh(target)).host_id));
        let job: BackupJob | 'lost' | undefined;
        try {
          job = h ? await this.#job(h, op.job!) : 'lost';
        } catch (e) {
          this.#d.log(`restore ${op.id}: polling host ${h?.name}: ${toWarrenError(e).message}`);
        }
        if (job === 'lost')
          return await finish({
            code: 'HOST_UNAVAILABLE',
            message: `the host of tenant ${target.name} does not know restore job ${op.job} (it restarted); the tenant's volumes are as they were or fully restored, never half: check it and restore again if needed`,
          });
        if (job?.state === 'succeeded') return await finish(null, job.progress, job.result);
        if (job?.state === 'failed')
          return await finish(
            job.error ?? { code: 'INTERNAL', message: 'the host reported a failure' },
            job.progress,
          );
        if (job) await this.#progress('operations', op.id, job.progress);
        if (Date.now() > deadline)
          return await finish({
            code: 'TIMEOUT',
            message: `not finished within WARREN_BACKUP_JOB_TIMEOUT_MS (${this.#d.config.backupJobTimeoutMs} ms)`,
          });
        await this.#sleep(this.#d.config.backupPollMs);
      }
    } catch (e) {
      await finish(toWarrenError(e)).catch(() => {});
    } finally {
      done();
      onEnd(ended.error, ended.result);
    }
  }

  /** Waits until a new tenant's host reports its VM (running); fails past the deadline or if it fails. */
  async #untilCreated(target: TenantsTable, deadline: number): Promise<void> {
    while (!this.#closed) {
      const cur = await this.#fresh(target);
      if (cur.state === 'running' || cur.state === 'stopped') return;
      if (cur.state === 'failed' || cur.desired_state === 'absent')
        throw new WarrenError(
          isErrorCode(cur.last_error_code) ? cur.last_error_code : 'VM_BOOT_FAILED',
          `new tenant ${cur.name} did not start (${cur.last_error_message ?? cur.state}); nothing was restored`,
        );
      if (Date.now() > deadline)
        throw new WarrenError(
          'TIMEOUT',
          `new tenant ${cur.name} did not start within WARREN_OPERATION_TIMEOUT_MS; nothing was restored (delete it, or restore into it when it runs)`,
        );
      await this.#sleep(this.#d.config.backupPollMs);
    }
  }

  async #finishOp(op: OperationsTable, error: ErrorSummary | null, progress?: BackupProgress): Promise<void> {
    await this.#d.db
      .updateTable('operations')
      .set({
        status: error ? 'failed' : 'succeeded',
        error_code: error ? error.code.slice(0, 64) : null,
        error_message: error ? error.message.slice(0, 4096) : null,
        ...(progress ? { progress: JSON.stringify(progressOf(progress)) } : {}),
        updated_at: now(),
      })
      .where('id', '=', op.id)
      .where('status', '=', 'running')
      .execute();
    this.#d.onOperationChange?.(op.tenant_id);
  }

  // ---- start, schedule, retention, GC ----

  /**
   * After a restart: every backup still `running` and every running restore is followed again
   * (its host may still run it); what a host lost is decided as `#followBackup` says. Until a
   * row ends it keeps GC out; a restore holds its tenant's lock again.
   */
  async reconcile(): Promise<void> {
    await this.drills.reconcile();
    const rows = await this.#d.db.selectFrom('backups').selectAll().where('state', '=', 'running').execute();
    for (const row of rows) {
      this.gate.backupStarted();
      this.#follow(this.#followBackup(row, undefined, () => this.gate.backupEnded()));
    }
    const ops = await this.#d.db
      .selectFrom('operations')
      .selectAll()
      .where('kind', '=', 'restore')
      .where('status', '=', 'running')
      .execute();
    for (const op of ops) {
      const target = await this.#d.db
        .selectFrom('tenants')
        .selectAll()
        .where('id', '=', op.tenant_id)
        .executeTakeFirst();
      if (!target || !op.job) {
        await this.#finishOp(op, { code: 'NOT_FOUND', message: `tenant ${op.tenant_name} is gone` });
        continue;
      }
      let release: () => void;
      try {
        release = this.#d.locks.hold(target, 'restore');
      } catch {
        continue;
      }
      this.gate.restoreStarted();
      this.#follow(
        this.#runRestore(op, target, undefined, false, () => {
          this.gate.restoreEnded();
          release();
        }),
      );
    }
  }

  /**
   * Deletes a complete backup the keep rules no longer keep (catalog row, then manifest);
   * false when a restore or verify reads it now (it is pruned at a later pass).
   */
  async prune(id: string): Promise<boolean> {
    if (this.#reading.has(id)) return false;
    const r = await this.#d.db
      .deleteFrom('backups')
      .where('id', '=', id)
      .where('state', '=', 'complete')
      .executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) return false;
    await this.#d.store.delete(manifestObjectKey(id)).catch(() => {});
    return true;
  }

  /**
   * Garbage collection: every chunk no complete backup's manifest references and every manifest
   * not in the catalog is deleted. Skipped (ran: false) while any backup runs, here or as a
   * `running` row not yet reconciled, or a restore reads.
   */
  async gc(): Promise<{ ran: boolean; deletedObjects: number }> {
    if (!this.gate.idle()) return { ran: false, deletedObjects: 0 };
    const running = await this.#d.db
      .selectFrom('backups')
      .select('id')
      .where('state', '=', 'running')
      .executeTakeFirst();
    if (running || !this.gate.idle()) return { ran: false, deletedObjects: 0 };
    const release = this.gate.gcStarted();
    try {
      const rows = await this.#d.db
        .selectFrom('backups')
        .innerJoin('tenant_keys', 'tenant_keys.tenant_id', 'backups.tenant_id')
        .select(['backups.id', 'backups.tenant_id', 'tenant_keys.wrapped'])
        .where('backups.state', '=', 'complete')
        .execute();
      // A key that does not unwrap stops GC here (BACKUP_KEY_REJECTED): it never deletes by guess.
      const live = rows.map((r) => ({
        id: r.id,
        tenantKey: unwrapTenantKey(this.#d.masterKey, r.tenant_id, r.wrapped),
      }));
      const { deletedObjects } = await this.#d.format.collectGarbage(this.#d.store, live);
      if (deletedObjects > 0) this.#d.log(`backup GC: deleted ${deletedObjects} unreferenced objects`);
      // Uploads a crashed job left half-done (fs temporary files, S3 multipart uploads). Only
      // those older than a job may run: a host may still be writing for a job this process
      // already gave up on as lost.
      const incomplete = await this.#d.store.collectIncomplete(this.#d.config.backupJobTimeoutMs);
      if (incomplete.removed > 0) this.#d.log(`backup GC: removed ${incomplete.removed} incomplete uploads`);
      return { ran: true, deletedObjects: deletedObjects + incomplete.removed };
    } finally {
      release();
    }
  }

  /** Resolves when every job this process follows has ended (tests). */
  async settled(): Promise<void> {
    while (this.#jobs.size > 0) await Promise.allSettled([...this.#jobs]);
  }

  /** Stops following jobs (their rows stay as they are, for the next start's reconcile). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const wake of this.#sleepers) wake();
    await Promise.allSettled([...this.#jobs]);
  }

  // ---- helpers ----

  #follow(job: Promise<void>): void {
    const p = job.catch((e) => this.#d.log(`backup job: ${toWarrenError(e).message}`));
    this.#jobs.add(p);
    void p.finally(() => this.#jobs.delete(p));
  }

  readonly #sleepers = new Set<() => void>();
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#sleepers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#sleepers.add(wake);
    });
  }

  async #fresh(tenant: Pick<TenantsTable, 'id' | 'name'>): Promise<TenantsTable> {
    const cur = await this.#d.db
      .selectFrom('tenants')
      .selectAll()
      .where('id', '=', tenant.id)
      .executeTakeFirst();
    if (!cur) throw new WarrenError('NOT_FOUND', `no tenant ${tenant.name}`);
    return cur;
  }

  async #hostById(id: string | null): Promise<HostsTable | undefined> {
    if (!id) return undefined;
    return this.#d.db.selectFrom('hosts').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async #post(host: HostsTable, path: string, body: unknown): Promise<void> {
    const res = await this.#d.agents.request(host, 'POST', path, {
      body: JSON.stringify(body),
      contentType: 'application/json',
      timeoutMs: HOST_CALL_MS,
    });
    await res.body?.cancel();
  }

  /** The host's job, or 'lost' when the host answers that it does not know it. */
  async #job(host: HostsTable, id: string): Promise<BackupJob | 'lost'> {
    let res: Response;
    try {
      res = await this.#d.agents.request(host, 'GET', `/v1/backup-jobs/${id}`, { timeoutMs: HOST_CALL_MS });
    } catch (e) {
      if (e instanceof WarrenError && e.status === 404) return 'lost';
      throw e;
    }
    const parsed = BackupJob.safeParse(await res.json().catch(() => undefined));
    if (!parsed.success || parsed.data.id !== id)
      throw new WarrenError(
        'HOST_UNAVAILABLE',
        `host ${host.name} answered for job ${id} with an unexpected shape`,
      );
    return parsed.data;
  }

  async #progress(table: 'backups' | 'operations', id: string, p: BackupProgress): Promise<void> {
    const json = JSON.stringify(table === 'backups' ? p : progressOf(p));
    if (table === 'backups')
      await this.#d.db
        .updateTable('backups')
        .set({ progress: json })
        .where('id', '=', id)
        .where('state', '=', 'running')
        .execute();
    else {
      const { numUpdatedRows } = await this.#d.db
        .updateTable('operations')
        .set({ progress: json, updated_at: now() })
        .where('id', '=', id)
        .where('status', '=', 'running')
        .executeTakeFirst();
      if (numUpdatedRows > 0n && this.#d.onOperationChange) {
        const op = await this.#d.db
          .selectFrom('operations')
          .select('tenant_id')
          .where('id', '=', id)
          .executeTakeFirst();
        if (op) this.#d.onOperationChange(op.tenant_id);
      }
    }
  }
}
