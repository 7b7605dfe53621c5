import { randomBytes } from 'node:crypto';
import {
  type Backup,
  type BackupResult,
  type ErrorSummary,
  EXEC_CONTENT_TYPE,
  type FileDigest,
  MAX_DRILL_FILES,
  type TenantExecRequest,
  vmIdOfTenant,
  WarrenError,
} from '@warren/protocol';
import type { AgentClient } from '../agents/agent-client.ts';
import { toWarrenError } from '../api/errors.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { HostService } from '../hosts/service.ts';
import { now } from '../ids.ts';
import type { BackupsTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import type { TenantService } from '../tenants/service.ts';
import { auditScheduler } from './schedule.ts';
import type { BackupService } from './service.ts';
import { backupView } from './view.ts';

/** The most of a guest's `sha256sum` answer read: MAX_DRILL_FILES lines of a digest and a path. */
const MAX_EXEC_ANSWER_BYTES = 4 * 1024 * 1024;
/** How long the guest's `sha256sum` of the sample may take. */
const CHECK_TIMEOUT_MS = 5 * 60_000;
/** Scratch tenants are named this and 12 random hex digits: never a name a user picked by chance. */
const SCRATCH_PREFIX = 'drill-';

export interface BackupDrillsDeps {
  db: Db;
  config: ControlPlaneConfig;
  hosts: HostService;
  agents: AgentClient;
  tenants: TenantService;
  backups: BackupService;
  log: (m: string) => void;
  /** Tracks the drill like the service's other jobs (settled(), close()). */
  follow: (job: Promise<void>) => void;
  sleep: (ms: number) => Promise<void>;
  closed: () => boolean;
}

/**
 * Restore drills: a complete backup restored into a scratch tenant (a new tenant made like the
 * backup's, with no network), its VM booted, and a sample of its files' digests taken in the
 * guest (`sha256sum` through the exec path, the guest kernel's ext4) compared with the host
 * agent's reading of the restored volume before the VM started (its own ext4 reader). The
 * scratch tenant is deleted at the end whatever happened; one a control plane left behind when
 * it stopped mid-drill is deleted at its next start (its name is on the backup's row before it
 * is created). One drill runs at a time. The outcome is kept on the backup and audited.
 */
export class BackupDrills {
  readonly #d: BackupDrillsDeps;
  #running: string | undefined;

  constructor(deps: BackupDrillsDeps) {
    this.#d = deps;
  }

  /** Starts a drill of backup `id` of `tenant`; answers at once with the backup, its drill running. */
  async start(tenant: TenantsTable, id: string, trigger: 'manual' | 'scheduled' = 'manual'): Promise<Backup> {
    if (this.#running)
      throw new WarrenError(
        'CONFLICT',
        `a restore drill runs already (backup ${this.#running}); one runs at a time, try again when it has ended`,
      );
    const row = await this.#d.db
      .selectFrom('backups')
      .selectAll()
      .where('id', '=', id)
      .where('tenant_id', '=', tenant.id)
      .executeTakeFirst();
    if (!row) throw new WarrenError('NOT_FOUND', `tenant ${tenant.name} has no backup ${id}`);
    if (row.state !== 'complete')
      throw new WarrenError(
        'CONFLICT',
        `backup ${id} is ${row.state}, not complete; only a complete one is drilled`,
      );
    const scratch = `${SCRATCH_PREFIX}${randomBytes(6).toString('hex')}`;
    const started: Partial<BackupsTable> = {
      drill_state: 'running',
      drill_at: now(),
      drill_files: 0,
      drill_error_code: null,
      drill_error_message: null,
      // Before the tenant exists: a restart from here on finds it by this name and deletes it.
      drill_tenant: scratch,
    };
    this.#running = id;
    try {
      await this.#d.db.updateTable('backups').set(started).where('id', '=', id).execute();
    } catch (e) {
      this.#running = undefined;
      throw e;
    }
    this.#d.follow(
      this.#run(tenant, row, scratch, trigger).finally(() => {
        this.#running = undefined;
      }),
    );
    return backupView({ ...row, ...started });
  }

  /**
   * The scheduler's part (WARREN_BACKUP_DRILL_INTERVAL_MS; 0: none): when no drill runs, the
   * tenant whose backups have gone longest without a drill, if that is longer than the interval,
   * has its newest complete backup drilled. Returns the backup drilled, if any.
   */
  async due(at: number): Promise<string | undefined> {
    const interval = this.#d.config.backupDrillIntervalMs;
    if (interval === 0 || this.#running || this.#d.backups.gate.gcRunning) return undefined;
    const tenants = await this.#d.db
      .selectFrom('backups')
      .innerJoin('tenants', 'tenants.id', 'backups.tenant_id')
      .select(['backups.tenant_id as tenant_id'])
      .select((eb) => eb.fn.max('backups.drill_at').as('last'))
      .where('backups.state', '=', 'complete')
      .where('tenants.desired_state', '!=', 'absent')
      .groupBy('backups.tenant_id')
      .execute();
    const never = '';
    const next = tenants
      .map((t) => ({ id: t.tenant_id, last: (t.last as string | null) ?? never }))
      .sort((a, b) => a.last.localeCompare(b.last) || a.id.localeCompare(b.id))[0];
    if (!next || (next.last !== never && Date.parse(next.last) > at - interval)) return undefined;
    const tenant = await this.#d.db
      .selectFrom('tenants')
      .selectAll()
      .where('id', '=', next.id)
      .executeTakeFirstOrThrow();
    const newest = await this.#d.db
      .selectFrom('backups')
      .select('id')
      .where('tenant_id', '=', next.id)
      .where('state', '=', 'complete')
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .executeTakeFirstOrThrow();
    try {
      await this.start(tenant, newest.id, 'scheduled');
      return newest.id;
    } catch (e) {
      const err = toWarrenError(e);
      this.#d.log(`scheduled restore drill of backup ${newest.id}: ${err.message}`);
      return undefined;
    }
  }

  /**
   * At start: drills a previous control plane left running are failed, and their scratch
   * tenants (found by the name their rows hold) deleted.
   */
  async reconcile(): Promise<void> {
    const rows = await this.#d.db
      .selectFrom('backups')
      .selectAll()
      .where('drill_state', '=', 'running')
      .execute();
    for (const row of rows) {
      await this.#removeScratch(row.drill_tenant);
      await this.#end(row, 0, {
        code: 'INTERNAL',
        message:
          'the control plane stopped while this drill ran; its scratch tenant was deleted, run the drill again',
      });
    }
  }

  async #run(source: TenantsTable, row: BackupsTable, scratch: string, trigger: string): Promise<void> {
    const checked = { n: 0 };
    let error: ErrorSummary | null;
    try {
      error = await this.#check(source, row, scratch, checked);
    } catch (e) {
      const err = toWarrenError(e);
      error = { code: err.code, message: err.message };
    } finally {
      await this.#removeScratch(scratch).catch((e: unknown) =>
        this.#d.log(
          `restore drill of ${row.id}: deleting scratch tenant ${scratch}: ${toWarrenError(e).message}`,
        ),
      );
    }
    // A control plane that stops mid-drill leaves the row running for the next start's reconcile.
    if (this.#d.closed()) return;
    await this.#end(row, checked.n, error);
    await auditScheduler(
      this.#d.db,
      'tenant.backup.drill',
      `${row.tenant_name}:${row.id}${trigger === 'scheduled' ? ' (scheduled)' : ''}`,
      row.tenant_id,
      error ? 500 : 200,
      error ? error.code : 'passed',
    );
    this.#d.log(
      `restore drill of backup ${row.id} (tenant ${row.tenant_name}): ${error ? `failed: ${error.message}` : `passed, ${checked.n} files checked`}`,
    );
  }

  /** Restores, boots and compares; the reason it failed, or null. `checked.n` counts the files that matched. */
  async #check(
    source: TenantsTable,
    row: BackupsTable,
    scratch: string,
    checked: { n: number },
  ): Promise<ErrorSummary | null> {
    const restored = await new Promise<{ error: ErrorSummary | null; result: BackupResult | null }>(
      (resolve) => {
        this.#d.backups
          .restore(source, row.id, scratch, {
            sampleFiles: MAX_DRILL_FILES,
            onEnd: (error, result) => resolve({ error, result }),
          })
          .catch((e: unknown) => resolve({ error: toWarrenError(e), result: null }));
      },
    );
    if (restored.error) return { code: restored.error.code, message: restored.error.message };
    const sample = restored.result?.sample;
    if (!sample)
      throw new WarrenError('BACKUP_DRILL_FAILED', "the host did not read back the restored volume's files");
    if (sample.error)
      throw new WarrenError(
        'BACKUP_DRILL_FAILED',
        `the host could not read the restored filesystem: ${sample.error}`,
      );
    const guest = await this.#guestDigests(scratch, sample.files);
    for (const f of sample.files) {
      const g = guest.get(f.path);
      if (g === undefined)
        throw new WarrenError('BACKUP_DRILL_FAILED', `${f.path}: the restored guest cannot read it`);
      if (g !== f.sha256)
        throw new WarrenError(
          'BACKUP_DRILL_FAILED',
          `${f.path}: the restored guest reads sha256 ${g}, the host read ${f.sha256} from the restored volume`,
        );
      checked.n++;
    }
    return null;
  }

  /**
   * The scratch guest's `sha256sum` of `files`, by path. It is run as soon as the guest
   * answers: that answer is the boot check (the VM booted, its agent runs, the volume is
   * mounted). Only lines naming a sampled path are kept.
   */
  async #guestDigests(scratch: string, files: FileDigest[]): Promise<Map<string, string>> {
    const deadline = Date.now() + this.#d.config.operationTimeoutMs;
    const wanted = new Set(files.map((f) => f.path));
    const request: TenantExecRequest = {
      argv: files.length > 0 ? ['sha256sum', '--', ...files.map((f) => f.path)] : ['true'],
      timeoutMs: CHECK_TIMEOUT_MS,
    };
    for (;;) {
      if (this.#d.closed()) throw new WarrenError('INTERNAL', 'the control plane is stopping');
      let stdout: string;
      try {
        stdout = await this.#exec(scratch, request);
      } catch (e) {
        const err = toWarrenError(e);
        if (Date.now() > deadline)
          throw new WarrenError(
            err.code === 'TIMEOUT' ? 'TIMEOUT' : 'VM_BOOT_FAILED',
            `the scratch tenant did not boot and answer within WARREN_OPERATION_TIMEOUT_MS: ${err.message}`,
          );
        await this.#d.sleep(this.#d.config.backupPollMs);
        continue;
      }
      const out = new Map<string, string>();
      for (const line of stdout.split('\n')) {
        const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line);
        if (m && wanted.has(m[2]!)) out.set(m[2]!, m[1]!);
      }
      return out;
    }
  }

  /** Runs `request` in the scratch tenant's guest; its stdout (bounded), whatever the exit code. */
  async #exec(scratch: string, request: TenantExecRequest): Promise<string> {
    const tenant = await this.#d.db
      .selectFrom('tenants')
      .selectAll()
      .where('name', '=', scratch)
      .executeTakeFirst();
    if (!tenant) throw new WarrenError('NOT_FOUND', `scratch tenant ${scratch} is gone`);
    const host = await this.#d.hosts.runningHostOf(tenant);
    const res = await this.#d.agents.request(host, 'POST', `/v1/vms/${vmIdOfTenant(tenant.id)}/exec`, {
      body: JSON.stringify(request),
      contentType: 'application/json',
      timeoutMs: CHECK_TIMEOUT_MS + 60_000,
    });
    if (!res.headers.get('content-type')?.startsWith(EXEC_CONTENT_TYPE))
      throw new WarrenError('GUEST_PROTOCOL', 'the exec answer is not a stream of lines');
    // The guest is the backup's tenant's: its answer is read up to a bound, never whole.
    let text = '';
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
      if (text.length > 2 * MAX_EXEC_ANSWER_BYTES) {
        await reader.cancel();
        throw new WarrenError('BACKUP_DRILL_FAILED', "the restored guest's sha256sum said more than digests");
      }
    }
    let stdout = '';
    let exited = false;
    for (const line of text.split('\n')) {
      if (!line) continue;
      const msg = JSON.parse(line) as {
        stdout?: string;
        exit?: unknown;
        error?: { code?: string; message?: string };
      };
      if (typeof msg.stdout === 'string') stdout += Buffer.from(msg.stdout, 'base64').toString('utf8');
      if (msg.exit) exited = true;
      if (msg.error)
        throw new WarrenError(
          'GUEST_UNAVAILABLE',
          `exec in the scratch tenant: ${msg.error.message ?? 'failed'}`,
        );
    }
    if (!exited)
      throw new WarrenError('GUEST_UNAVAILABLE', 'the exec in the scratch tenant ended without an exit');
    return stdout.slice(0, MAX_EXEC_ANSWER_BYTES);
  }

  async #removeScratch(name: string | null): Promise<void> {
    if (!name?.startsWith(SCRATCH_PREFIX)) return;
    const t = await this.#d.db.selectFrom('tenants').selectAll().where('name', '=', name).executeTakeFirst();
    if (t && t.desired_state !== 'absent') await this.#d.tenants.delete(t);
  }

  async #end(row: BackupsTable, checked: number, error: ErrorSummary | null): Promise<void> {
    await this.#d.db
      .updateTable('backups')
      .set({
        drill_state: error ? 'failed' : 'passed',
        drill_files: checked,
        drill_error_code: error ? error.code.slice(0, 64) : null,
        drill_error_message: error ? error.message.slice(0, 4096) : null,
        drill_tenant: null,
      })
      .where('id', '=', row.id)
      .execute();
  }
}
