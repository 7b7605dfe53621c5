import { setTimeout as sleep } from 'node:timers/promises';
import {
  Backup,
  BackupId,
  BackupList,
  BackupPolicy,
  CreateBackupRequest,
  isErrorCode,
  parseOrThrow,
  RestoreBackupRequest,
  TenantOperationResponse,
  VerifyResult,
  WarrenError,
} from '@warren/protocol';
import type { z } from 'zod';
import { type Http, path } from './http.ts';

export interface BackupWaitOptions {
  /** Called after every poll with the backup as it is (its `progress` while it runs). */
  onProgress?: (backup: Backup) => void;
  /** Gives up with TIMEOUT after this long; the backup itself keeps going. Default: no limit. */
  timeoutMs?: number;
  /** Time between polls. Default 500 ms. */
  intervalMs?: number;
  signal?: AbortSignal;
}

/** The error a failed backup stands for, with the code the control plane gave it. */
export function backupError(b: Backup): WarrenError {
  const code = isErrorCode(b.error?.code) ? b.error.code : 'INTERNAL';
  return new WarrenError(
    code,
    `backup ${b.id} of tenant ${b.tenantName} failed: ${b.error?.message ?? 'no reason given'}`,
    {
      details: { backup: b.id, tenant: b.tenantName },
    },
  );
}

/**
 * Backups of a tenant (`/v1/tenants/{t}/backups`): encrypted, deduplicated copies of its data
 * volume (and root disk when asked) in the platform's object store. A restore is an operation
 * (`operations.wait`); a backup is followed through its own record (`wait`).
 */
export class Backups {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /** Starts a backup; resolves at once with it running (see `wait`). */
  async create(tenant: string, request: CreateBackupRequest = {}): Promise<Backup> {
    const json = parseOrThrow(CreateBackupRequest, request);
    return this.#http.json(Backup, 'POST', path`/v1/tenants/${tenant}/backups`, { json });
  }

  /** Newest first; running and failed ones too. */
  async list(tenant: string): Promise<Backup[]> {
    return (await this.#http.json(BackupList, 'GET', path`/v1/tenants/${tenant}/backups`)).backups;
  }

  async get(tenant: string, id: string, options: { signal?: AbortSignal } = {}): Promise<Backup> {
    parseOrThrow(BackupId, id);
    return this.#http.json(Backup, 'GET', path`/v1/tenants/${tenant}/backups/${id}`, {
      signal: options.signal,
    });
  }

  async delete(tenant: string, id: string): Promise<void> {
    parseOrThrow(BackupId, id);
    const res = await this.#http.request('DELETE', path`/v1/tenants/${tenant}/backups/${id}`);
    await res.body?.cancel();
  }

  /** Polls the backup until it is complete (resolves with it) or failed (throws its error). */
  async wait(tenant: string, id: string, options: BackupWaitOptions = {}): Promise<Backup> {
    const interval = options.intervalMs ?? 500;
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    for (;;) {
      const b = await this.get(tenant, id, { signal: options.signal });
      options.onProgress?.(b);
      if (b.state === 'complete') return b;
      if (b.state === 'failed') throw backupError(b);
      if (Date.now() + interval > deadline) {
        throw new WarrenError('TIMEOUT', `backup ${id} is still running; it goes on in the background`);
      }
      try {
        await sleep(interval, undefined, { signal: options.signal });
      } catch (e) {
        throw new WarrenError('CONFLICT', `waiting for backup ${id} cancelled by the caller`, { cause: e });
      }
    }
  }

  /**
   * Restores a complete backup into its tenant, or into a new tenant named `newTenant` (admin
   * only). Resolves with the target tenant and the restore operation (`operations.wait`).
   */
  async restore(
    tenant: string,
    id: string,
    request: RestoreBackupRequest = {},
  ): Promise<TenantOperationResponse> {
    parseOrThrow(BackupId, id);
    const json = parseOrThrow(RestoreBackupRequest, request);
    return this.#http.json(
      TenantOperationResponse,
      'POST',
      path`/v1/tenants/${tenant}/backups/${id}/restore`,
      {
        json,
      },
    );
  }

  /**
   * Starts a restore drill of a complete backup (admin only): restored into a scratch tenant,
   * booted, a sample of its files' digests compared, the scratch tenant deleted. Resolves at
   * once with the backup, its `drill` running (see `waitDrill`).
   */
  async drill(tenant: string, id: string): Promise<Backup> {
    parseOrThrow(BackupId, id);
    return this.#http.json(Backup, 'POST', path`/v1/tenants/${tenant}/backups/${id}/drill`);
  }

  /** Polls the backup until its drill has ended: resolves with it when it passed, throws the drill's error when it failed. */
  async waitDrill(tenant: string, id: string, options: BackupWaitOptions = {}): Promise<Backup> {
    const interval = options.intervalMs ?? 500;
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    for (;;) {
      const b = await this.get(tenant, id, { signal: options.signal });
      options.onProgress?.(b);
      if (b.drill?.state === 'passed') return b;
      if (b.drill?.state === 'failed') {
        const code = isErrorCode(b.drill.error?.code) ? b.drill.error.code : 'INTERNAL';
        throw new WarrenError(
          code,
          `restore drill of backup ${id} of tenant ${b.tenantName} failed: ${b.drill.error?.message ?? 'no reason given'}`,
          { details: { backup: id, tenant: b.tenantName } },
        );
      }
      if (!b.drill) throw new WarrenError('NOT_FOUND', `backup ${id} has no restore drill; start one first`);
      if (Date.now() + interval > deadline)
        throw new WarrenError(
          'TIMEOUT',
          `the drill of backup ${id} is still running; it goes on in the background`,
        );
      try {
        await sleep(interval, undefined, { signal: options.signal });
      } catch (e) {
        throw new WarrenError('CONFLICT', `waiting for the drill of backup ${id} cancelled by the caller`, {
          cause: e,
        });
      }
    }
  }

  /** Reads the backup back from the object store and checks every object; `ok` false names what failed. */
  async verify(tenant: string, id: string): Promise<VerifyResult> {
    parseOrThrow(BackupId, id);
    return this.#http.json(VerifyResult, 'POST', path`/v1/tenants/${tenant}/backups/${id}/verify`);
  }

  async policy(tenant: string): Promise<BackupPolicy> {
    return this.#http.json(BackupPolicy, 'GET', path`/v1/tenants/${tenant}/backup-policy`);
  }

  async setPolicy(tenant: string, policy: z.input<typeof BackupPolicy>): Promise<BackupPolicy> {
    const json = parseOrThrow(BackupPolicy, policy);
    return this.#http.json(BackupPolicy, 'PUT', path`/v1/tenants/${tenant}/backup-policy`, { json });
  }
}
