import {
  ChangeList,
  CreatedSnapshot,
  type CreateSnapshotRequest,
  type Credentials,
  parseOrThrow,
  RevertResult,
  type Snapshot,
  SnapshotList,
  vmIdOfTenant,
  WarrenError,
} from '@warren/protocol';
import type { z } from 'zod';
import type { AgentClient } from '../agents/agent-client.ts';
import type { HostService } from '../hosts/service.ts';
import type { HostsTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';

const MIB = 1024 * 1024;
/**
 * A snapshot or a revert of a large guest under TCG can take many seconds (its memory is
 * written or mapped, the guest agent must answer again); this only bounds a lost agent.
 */
const LONG_CALL_MS = 5 * 60_000;

/**
 * Snapshots of a tenant's VM, through its host agent, which is the source of truth for what
 * exists (the control plane keeps no record of them): each call asks the agent. Callers hold
 * the tenant's lock (TenantLocks) around create, revert and delete.
 */
export class SnapshotService {
  readonly #db: Db;
  readonly #hosts: HostService;
  readonly #agents: AgentClient;

  constructor(deps: { db: Db; hosts: HostService; agents: AgentClient }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#agents = deps.agents;
  }

  /** The tenant as it is now: the row a route loaded may be stale once the lock is held. */
  async fresh(row: TenantsTable): Promise<TenantsTable> {
    const cur = await this.#db.selectFrom('tenants').selectAll().where('id', '=', row.id).executeTakeFirst();
    if (!cur) throw new WarrenError('NOT_FOUND', `no tenant ${row.name}`);
    return cur;
  }

  async list(tenant: TenantsTable): Promise<Snapshot[]> {
    const host = await this.#hosts.liveHostOf(tenant);
    return (await this.#json(SnapshotList, host, 'GET', `${base(tenant)}/snapshots`)).snapshots;
  }

  /**
   * Takes a snapshot of a running tenant, after the disk quota check (`checkSnapshotQuota`).
   * With `reuse`, an unchanged snapshot of that name is returned as it is.
   */
  async create(
    tenant: TenantsTable,
    request: z.output<typeof import('@warren/protocol').CreateSnapshotRequest>,
  ): Promise<CreatedSnapshot> {
    const host = await this.#hosts.runningHostOf(tenant);
    const existing = (await this.#json(SnapshotList, host, 'GET', `${base(tenant)}/snapshots`)).snapshots;
    checkSnapshotQuota(tenant, existing, request.name);
    return this.#json(CreatedSnapshot, host, 'POST', `${base(tenant)}/snapshots`, {
      body: {
        ...(request.name ? { name: request.name } : {}),
        reuse: request.reuse,
      } satisfies CreateSnapshotRequest,
    });
  }

  async revert(tenant: TenantsTable, name: string): Promise<RevertResult> {
    const host = await this.#hosts.runningHostOf(tenant);
    return this.#json(
      RevertResult,
      host,
      'POST',
      `${base(tenant)}/snapshots/${encodeURIComponent(name)}/revert`,
    );
  }

  async delete(tenant: TenantsTable, name: string): Promise<void> {
    const host = await this.#hosts.liveHostOf(tenant);
    await this.#call(host, 'DELETE', `${base(tenant)}/snapshots/${encodeURIComponent(name)}`);
  }

  /** Files changed on both disks since the snapshot `name`. */
  async changes(tenant: TenantsTable, name: string): Promise<ChangeList> {
    const host = await this.#hosts.liveHostOf(tenant);
    return this.#json(
      ChangeList,
      host,
      'GET',
      `${base(tenant)}/snapshots/${encodeURIComponent(name)}/changes`,
    );
  }

  /** Places credentials in the guest's tmpfs; the agent keeps them in memory only. */
  async putCredentials(
    tenant: TenantsTable,
    credentials: z.output<typeof import('@warren/protocol').Credentials> | Credentials,
  ): Promise<void> {
    const host = await this.#hosts.runningHostOf(tenant);
    await this.#call(host, 'PUT', `${base(tenant)}/credentials`, { body: credentials });
  }

  async deleteCredentials(tenant: TenantsTable): Promise<void> {
    const host = await this.#hosts.liveHostOf(tenant);
    await this.#call(host, 'DELETE', `${base(tenant)}/credentials`);
  }

  async #call(
    host: HostsTable,
    method: string,
    path: string,
    init: { body?: unknown } = {},
  ): Promise<Response> {
    const res = await this.#agents.request(host, method, path, {
      ...(init.body === undefined
        ? {}
        : { body: JSON.stringify(init.body), contentType: 'application/json' }),
      timeoutMs: LONG_CALL_MS,
    });
    return res;
  }

  async #json<S extends z.ZodType>(
    schema: S,
    host: HostsTable,
    method: string,
    path: string,
    init: { body?: unknown } = {},
  ): Promise<z.output<S>> {
    const res = await this.#call(host, method, path, init);
    const body = await res.json().catch(() => undefined);
    try {
      return parseOrThrow(schema, body, 'HOST_UNAVAILABLE');
    } catch (e) {
      throw new WarrenError(
        'HOST_UNAVAILABLE',
        `host ${host.name} answered ${method} ${path.replace(/^\/v1\/vms\/[^/]+/, '')} with an unexpected shape (${(e as Error).message}); is its agent as new as the control plane?`,
      );
    }
  }
}

function base(tenant: Pick<TenantsTable, 'id'>): string {
  return `/v1/vms/${vmIdOfTenant(tenant.id)}`;
}

/**
 * The disk quota rule for snapshots. A tenant's disk allowance (`quota.diskMiB`) covers its
 * data volume (`diskMiB`, counted at its full size) and the bytes its snapshots hold on the
 * host. A new snapshot is counted before it exists at the size of the VM's memory (`memoryMiB`:
 * its memory image, the largest part of a fresh snapshot, whose disk layers are only what was
 * written since the previous one); a snapshot the new one replaces (same name) is not counted.
 * A create that would take the sum over the allowance is QUOTA_EXCEEDED.
 */
export function checkSnapshotQuota(
  tenant: Pick<TenantsTable, 'name' | 'disk_mib' | 'memory_mib' | 'quota_disk_mib'>,
  existing: Pick<Snapshot, 'name' | 'bytes'>[],
  replacing: string | undefined,
): void {
  const held = existing.filter((s) => s.name !== replacing).reduce((n, s) => n + s.bytes, 0);
  const needed = tenant.disk_mib * MIB + held + tenant.memory_mib * MIB;
  const allowed = tenant.quota_disk_mib * MIB;
  if (needed > allowed) {
    const heldMiB = Math.ceil(held / MIB);
    throw new WarrenError(
      'QUOTA_EXCEEDED',
      `a new snapshot of tenant ${tenant.name} (counted at its memory, ${tenant.memory_mib} MiB) with its data volume (${tenant.disk_mib} MiB) and its snapshots (${heldMiB} MiB) would exceed its disk quota of ${tenant.quota_disk_mib} MiB (quota.diskMiB); delete snapshots (\`warren tenant snapshot delete\`) or raise the quota`,
      { details: { limit: 'quota.diskMiB', value: tenant.quota_disk_mib, snapshotsMiB: heldMiB } },
    );
  }
}
