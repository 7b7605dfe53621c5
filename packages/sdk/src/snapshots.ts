import {
  ChangeList,
  CreatedSnapshot,
  CreateSnapshotRequest,
  CreateTenantSessionRequest,
  EndTenantSessionRequest,
  type ExecExit,
  parseOrThrow,
  RevertResult,
  type Snapshot,
  SnapshotList,
  SnapshotName,
  type TenantExecRequest,
  TenantSession,
  TenantSessionId,
  TenantSessionList,
  WarrenError,
} from '@warren/protocol';
import { type Http, path } from './http.ts';
import type { ExecOptions, Tenants } from './tenants.ts';

/** Snapshots of a tenant's VM: one consistent point of memory, devices and both disks. */
export class Snapshots {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /** Snapshots the running VM; without a name the host makes one up. */
  async create(tenant: string, request: CreateSnapshotRequest = {}): Promise<CreatedSnapshot> {
    const json = parseOrThrow(CreateSnapshotRequest, request);
    return this.#http.json(CreatedSnapshot, 'POST', path`/v1/tenants/${tenant}/snapshots`, { json });
  }

  async list(tenant: string): Promise<Snapshot[]> {
    return (await this.#http.json(SnapshotList, 'GET', path`/v1/tenants/${tenant}/snapshots`)).snapshots;
  }

  /** Brings the running VM back to the snapshot: processes, memory and both disks. */
  async revert(tenant: string, name: string): Promise<RevertResult> {
    parseOrThrow(SnapshotName, name);
    return this.#http.json(RevertResult, 'POST', path`/v1/tenants/${tenant}/snapshots/${name}/revert`);
  }

  async delete(tenant: string, name: string): Promise<void> {
    parseOrThrow(SnapshotName, name);
    const res = await this.#http.request('DELETE', path`/v1/tenants/${tenant}/snapshots/${name}`);
    await res.body?.cancel();
  }
}

export interface RunOptions extends ExecOptions {
  /** Called once the session has started (e.g. to print its id). */
  onSession?: (session: TenantSession) => void;
  /** Called with the files the command changed, before the session ends. */
  onChanges?: (changes: ChangeList) => void;
}

export interface RunResult {
  exit: ExecExit;
  /** The session as it ended. */
  session: TenantSession;
  /** What changed before the end; null when the list could not be read (the end still ran). */
  changes: ChangeList | null;
}

/**
 * Safe-YOLO sessions: a clean snapshot, credentials in a tmpfs in the guest, then the VM
 * reverted (or kept). `run` does a whole run.
 */
export class Sessions {
  readonly #http: Http;
  readonly #tenants: Tenants;

  constructor(http: Http, tenants: Tenants) {
    this.#http = http;
    this.#tenants = tenants;
  }

  async start(tenant: string, request: CreateTenantSessionRequest = {}): Promise<TenantSession> {
    const json = parseOrThrow(CreateTenantSessionRequest, request);
    return this.#http.json(TenantSession, 'POST', path`/v1/tenants/${tenant}/sessions`, { json });
  }

  async list(tenant: string): Promise<TenantSession[]> {
    return (await this.#http.json(TenantSessionList, 'GET', path`/v1/tenants/${tenant}/sessions`)).sessions;
  }

  async get(tenant: string, id: string): Promise<TenantSession> {
    parseOrThrow(TenantSessionId, id);
    return this.#http.json(TenantSession, 'GET', path`/v1/tenants/${tenant}/sessions/${id}`);
  }

  /** The files changed on both disks since the session's clean snapshot (while it is active). */
  async changes(tenant: string, id: string): Promise<ChangeList> {
    parseOrThrow(TenantSessionId, id);
    return this.#http.json(ChangeList, 'GET', path`/v1/tenants/${tenant}/sessions/${id}/changes`);
  }

  /** Removes the credentials, then reverts the VM to the clean snapshot unless `keep`. */
  async end(tenant: string, id: string, request: EndTenantSessionRequest = {}): Promise<TenantSession> {
    parseOrThrow(TenantSessionId, id);
    const json = parseOrThrow(EndTenantSessionRequest, request);
    return this.#http.json(TenantSession, 'POST', path`/v1/tenants/${tenant}/sessions/${id}/end`, { json });
  }

  /**
   * A whole safe-YOLO run: starts a session with the credentials, runs the command with its
   * output streamed, reads the changed files, and ends the session (reverting unless `keep`)
   * whatever happened: a failed or aborted exec ends it too, and always reverts. Resolves
   * with the command's exit record; a non-zero exit code is not an error.
   */
  async run(
    tenant: string,
    request: {
      credentials?: Pick<CreateTenantSessionRequest, 'files' | 'env'>;
      maxDurationMs?: number;
      exec: Omit<TenantExecRequest, 'stdin'>;
      keep?: boolean;
    },
    options: RunOptions = {},
  ): Promise<RunResult> {
    const session = await this.start(tenant, {
      ...request.credentials,
      ...(request.maxDurationMs === undefined ? {} : { maxDurationMs: request.maxDurationMs }),
    });
    options.onSession?.(session);
    let exit: ExecExit;
    try {
      exit = await this.#tenants.exec(tenant, request.exec, options);
    } catch (e) {
      // Whatever the command did stays unreviewed: back to the clean point, never kept.
      try {
        await this.end(tenant, session.id, { keep: false });
      } catch (ending) {
        const err = ending instanceof WarrenError ? ending : new WarrenError('INTERNAL', String(ending));
        throw new WarrenError(
          err.code,
          `${err.message} (ending session ${session.id} after the command failed: ${(e as Error)?.message ?? e})`,
          { cause: e },
        );
      }
      throw e;
    }
    let changes: ChangeList | null = null;
    try {
      changes = await this.changes(tenant, session.id);
      options.onChanges?.(changes);
    } catch {
      // The list is a courtesy; the end below is what must happen.
    }
    const ended = await this.end(tenant, session.id, { keep: request.keep ?? false });
    return { exit, session: ended, changes };
  }
}
