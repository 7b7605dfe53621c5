import {
  type ChangeList,
  type CreateTenantSessionRequest,
  Credentials,
  parseOrThrow,
  type TenantSession,
  WarrenError,
} from '@warren/protocol';
import type { z } from 'zod';
import { isUniqueViolation, toWarrenError } from '../api/errors.ts';
import type { ControlPlaneConfig } from '../config.ts';
import { newId, now } from '../ids.ts';
import type { TenantSessionsTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import type { TenantLocks } from './concurrency.ts';
import type { SnapshotService } from './snapshots.ts';
import { servesRequests } from './view.ts';

/** The clean snapshot every session starts from and reverts to (made, or reused when unchanged). */
export const SESSION_SNAPSHOT = 'session-base';

type CreateRequest = z.output<typeof import('@warren/protocol').CreateTenantSessionRequest>;
type Outcome = NonNullable<TenantSession['outcome']>;

/**
 * Safe-YOLO sessions: a clean snapshot, credentials in the guest's tmpfs for the run, then the
 * credentials removed and the VM reverted (or kept, on request). The database row holds the
 * session's state and never a credential; credentials travel from the request to the host
 * agent and nowhere else (not into the audit log, a log line or an error message).
 */
export class TenantSessionService {
  readonly #db: Db;
  readonly #config: ControlPlaneConfig;
  readonly #snapshots: SnapshotService;
  readonly #locks: TenantLocks;
  readonly #log: (m: string) => void;
  #pass: Promise<number> | undefined;

  constructor(deps: {
    db: Db;
    config: ControlPlaneConfig;
    snapshots: SnapshotService;
    locks: TenantLocks;
    log: (m: string) => void;
  }) {
    this.#db = deps.db;
    this.#config = deps.config;
    this.#snapshots = deps.snapshots;
    this.#locks = deps.locks;
    this.#log = deps.log;
  }

  /**
   * Starts a session: the row first (so anything placed in the guest has a session that ends
   * it, even after a crash of this process: the sweep expires it), then the clean snapshot,
   * then the credentials. A failed step leaves no credential behind and the session `failed`.
   */
  async create(
    tenant: TenantsTable,
    request: CreateRequest | CreateTenantSessionRequest,
  ): Promise<TenantSession> {
    const req = request as CreateRequest;
    const max = this.#config.sessionMaxMs;
    if (req.maxDurationMs !== undefined && req.maxDurationMs > max) {
      throw new WarrenError(
        'QUOTA_EXCEEDED',
        `maxDurationMs ${req.maxDurationMs} exceeds the platform maximum of ${max} ms (WARREN_SESSION_MAX_MS); ask for less`,
        { details: { limit: 'platform.sessionMaxMs', value: max } },
      );
    }
    const credentials = parseOrThrow(Credentials, { files: req.files ?? {}, env: req.env ?? {} });
    const hasCredentials = Object.keys(credentials.files).length + Object.keys(credentials.env).length > 0;
    return this.#locks.with(tenant, 'session start', async () => {
      const cur = await this.#snapshots.fresh(tenant);
      // A suspended tenant is woken by its host for the session's first call.
      if (!servesRequests(cur)) {
        throw new WarrenError('TENANT_NOT_RUNNING', `tenant ${cur.name} is ${cur.state}, not running`);
      }
      const started = Date.now();
      const row: TenantSessionsTable = {
        id: newId('ses'),
        tenant_id: cur.id,
        snapshot: SESSION_SNAPSHOT,
        state: 'active',
        outcome: null,
        error_code: null,
        error_message: null,
        created_at: new Date(started).toISOString(),
        expires_at: new Date(started + (req.maxDurationMs ?? max)).toISOString(),
        ended_at: null,
      };
      try {
        await this.#db.insertInto('tenant_sessions').values(row).execute();
      } catch (e) {
        if (!isUniqueViolation(e)) throw e;
        const active = await this.#activeOf(cur.id);
        throw new WarrenError(
          'CONFLICT',
          `tenant ${cur.name} already has an active session${active ? ` (${active.id})` : ''}; end it first (\`warren tenant session end ${cur.name} ${active?.id ?? 'ID'}\`)`,
        );
      }
      try {
        await this.#snapshots.create(cur, { name: SESSION_SNAPSHOT, reuse: true });
      } catch (e) {
        await this.#finish(row.id, 'failed', null, e);
        throw e;
      }
      if (hasCredentials) {
        try {
          await this.#snapshots.putCredentials(cur, credentials);
        } catch (e) {
          // A revert discards whatever part reached the guest; only if it fails are they wiped.
          const cleanup = await this.#snapshots
            .revert(cur, SESSION_SNAPSHOT)
            .catch((r) => this.#snapshots.deleteCredentials(cur).then(() => Promise.reject(r)))
            .then(
              () => 'the session was ended and the VM reverted',
              (c) => `cleaning up failed too (${toWarrenError(c).code}); end the session again to retry`,
            );
          const err = toWarrenError(e);
          // The agent's words are passed on, but never a credential they might quote.
          const failed = new WarrenError(
            err.code,
            `the credentials could not be placed in tenant ${cur.name}'s VM: ${redact(err.message, credentials)}; ${cleanup}`,
          );
          if (cleanup.startsWith('the session')) await this.#finish(row.id, 'failed', null, failed);
          else await this.#record(row.id, failed);
          throw failed;
        }
      }
      return view(row);
    });
  }

  async list(tenant: Pick<TenantsTable, 'id'>): Promise<TenantSession[]> {
    const rows = await this.#db
      .selectFrom('tenant_sessions')
      .selectAll()
      .where('tenant_id', '=', tenant.id)
      .orderBy('created_at', 'desc')
      .limit(100)
      .execute();
    return rows.map(view);
  }

  async get(tenant: Pick<TenantsTable, 'id'>, id: string): Promise<TenantSession> {
    return view(await this.#row(tenant, id));
  }

  /** What changed on the VM's disks since the session's clean snapshot; only while it is active. */
  async changes(tenant: TenantsTable, id: string): Promise<ChangeList> {
    const row = await this.#row(tenant, id);
    if (row.state !== 'active') {
      throw new WarrenError(
        'CONFLICT',
        `session ${id} is ${row.state}: its changes were reverted or are part of the VM now; list changes before ending a session`,
      );
    }
    return this.#snapshots.changes(tenant, row.snapshot);
  }

  /**
   * Ends a session: the credentials are removed from the guest, then (unless `keep`) the VM is
   * reverted to the clean snapshot. If the credentials cannot be removed the session stays
   * active (with the error) so the end can be retried, by the caller or by the expiry sweep;
   * if only the revert fails it ends as `failed`. Ending an ended session returns it as it is.
   */
  async end(tenant: TenantsTable, id: string, keep: boolean): Promise<TenantSession> {
    return this.#end(tenant, id, keep ? 'kept' : 'reverted');
  }

  /**
   * One pass of the expiry sweep: every active session past its expiry is ended with outcome
   * `expired` (reverted). A tenant busy with another step is left for the next pass. `at` is
   * the sweep's clock, so tests drive time through here.
   */
  async expire(at: number = Date.now()): Promise<number> {
    // Passes run one after the other: two at once would both find the same expired session.
    while (this.#pass) await this.#pass.catch(() => {});
    const pass = this.#expire(at);
    this.#pass = pass;
    try {
      return await pass;
    } finally {
      this.#pass = undefined;
    }
  }

  /** The interval's pass: skipped while one still runs (reverts take seconds), never queued. */
  async sweep(): Promise<void> {
    if (!this.#pass) await this.expire();
  }

  async #expire(at: number): Promise<number> {
    const due = await this.#db
      .selectFrom('tenant_sessions')
      .innerJoin('tenants', 'tenants.id', 'tenant_sessions.tenant_id')
      .selectAll('tenant_sessions')
      .select('tenants.name as tenant_name')
      // `ending` too: an end this process lost mid-way (a crash) is finished by the sweep.
      .where('tenant_sessions.state', 'in', ['active', 'ending'])
      .where('tenant_sessions.expires_at', '<=', new Date(at).toISOString())
      .limit(100)
      .execute();
    let ended = 0;
    for (const s of due) {
      if (this.#locks.busy(s.tenant_id)) continue;
      const tenant = await this.#db
        .selectFrom('tenants')
        .selectAll()
        .where('id', '=', s.tenant_id)
        .executeTakeFirst();
      if (!tenant) continue;
      try {
        await this.#end(tenant, s.id, 'expired');
        ended++;
        await this.#db
          .insertInto('audit_events')
          .values({
            at: now(),
            actor: 'control-plane',
            action: 'tenant.session.expire',
            target: `${tenant.name}:${s.id}`,
            tenant_id: tenant.id,
            result: 'ok',
            status: 200,
            request_id: '-',
          })
          .execute();
      } catch (e) {
        this.#log(
          `session sweeper: ending expired session ${s.id} of tenant ${s.tenant_name}: ${toWarrenError(e).code}: ${toWarrenError(e).message}`,
        );
      }
    }
    return ended;
  }

  async #end(tenant: TenantsTable, id: string, outcome: Outcome): Promise<TenantSession> {
    return this.#locks.with(tenant, 'session end', async () => {
      const row = await this.#row(tenant, id);
      if (row.state === 'ended' || row.state === 'failed') return view(row);
      await this.#db
        .updateTable('tenant_sessions')
        .set({ state: 'ending' })
        .where('id', '=', id)
        .where('state', '=', 'active')
        .execute();
      const cur = await this.#snapshots.fresh(tenant);
      // A revert discards the guest's memory whole, credentials with it (the agent drops its
      // copy too); only a kept VM needs them wiped, which restarts the guest agent (slow).
      if (outcome === 'kept') await this.#wipeOrStayActive(cur, id);
      else {
        try {
          await this.#snapshots.revert(cur, row.snapshot);
        } catch (e) {
          await this.#wipeOrStayActive(cur, id);
          const err = toWarrenError(e);
          const failed = new WarrenError(
            err.code,
            `session ${id} ended (its credentials are removed) but tenant ${cur.name}'s VM was not reverted: ${err.message}; revert it with \`warren tenant snapshot revert ${cur.name} ${row.snapshot}\``,
            { cause: e },
          );
          await this.#finish(id, 'failed', null, failed);
          throw failed;
        }
      }
      return view(await this.#finish(id, 'ended', outcome, null));
    });
  }

  /** Wipes the session's credentials from the guest; if that fails the session stays active, to be ended again. */
  async #wipeOrStayActive(cur: TenantsTable, id: string): Promise<void> {
    try {
      await this.#snapshots.deleteCredentials(cur);
    } catch (e) {
      const err = toWarrenError(e);
      const kept = new WarrenError(
        err.code,
        `the credentials could not be removed from tenant ${cur.name}'s VM: ${err.message}; the session stays active, end it again to retry`,
        { cause: e },
      );
      await this.#db
        .updateTable('tenant_sessions')
        .set({ state: 'active', error_code: kept.code, error_message: kept.message })
        .where('id', '=', id)
        .execute();
      throw kept;
    }
  }

  async #finish(
    id: string,
    state: 'ended' | 'failed',
    outcome: Outcome | null,
    error: unknown,
  ): Promise<TenantSessionsTable> {
    const err = error === null ? null : toWarrenError(error);
    await this.#db
      .updateTable('tenant_sessions')
      .set({
        state,
        outcome,
        ended_at: now(),
        error_code: err?.code ?? null,
        error_message: err?.message ?? null,
      })
      .where('id', '=', id)
      .execute();
    return this.#db.selectFrom('tenant_sessions').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
  }

  async #record(id: string, error: WarrenError): Promise<void> {
    await this.#db
      .updateTable('tenant_sessions')
      .set({ error_code: error.code, error_message: error.message })
      .where('id', '=', id)
      .execute();
  }

  async #row(tenant: Pick<TenantsTable, 'id'>, id: string): Promise<TenantSessionsTable> {
    const row = await this.#db
      .selectFrom('tenant_sessions')
      .selectAll()
      .where('id', '=', id)
      .where('tenant_id', '=', tenant.id)
      .executeTakeFirst();
    if (!row)
      throw new WarrenError(
        'NOT_FOUND',
        `no session ${id} for this tenant; list them with \`warren tenant session list\``,
      );
    return row;
  }

  #activeOf(tenantId: string): Promise<TenantSessionsTable | undefined> {
    return this.#db
      .selectFrom('tenant_sessions')
      .selectAll()
      .where('tenant_id', '=', tenantId)
      .where('state', 'in', ['active', 'ending'])
      .executeTakeFirst();
  }
}

export function view(row: TenantSessionsTable): TenantSession {
  return {
    id: row.id,
    tenantId: row.tenant_id,
    snapshot: row.snapshot,
    state: row.state as TenantSession['state'],
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    endedAt: row.ended_at,
    outcome: row.outcome as TenantSession['outcome'],
    error: row.error_code === null ? null : { code: row.error_code, message: row.error_message ?? '' },
  };
}

/** `message` with every credential value of 4 characters or more replaced. */
export function redact(
  message: string,
  credentials: { files: Record<string, string>; env: Record<string, string> },
): string {
  let out = message;
  for (const v of [...Object.values(credentials.files), ...Object.values(credentials.env)]) {
    if (v.length >= 4) out = out.split(v).join('[credential]');
  }
  return out;
}
