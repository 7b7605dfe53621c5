import { randomBytes } from 'node:crypto';
import {
  type CreateTenantRequest,
  DEFAULT_DASHBOARD_PORT,
  type DesiredState,
  type ListTenantsQuery,
  parseIdleTimeout,
  type Resources,
  type Tenant,
  type TenantOperationResponse,
  type UpdateTenantRequest,
  WarrenError,
  workloadOf,
} from '@warren/protocol';
import type { z } from 'zod';
import { isUniqueViolation } from '../api/errors.ts';
import { type ControlPlaneConfig, defaultIdleTimeoutMs } from '../config.ts';
import { healthySince, whereHealthy } from '../hosts/health.ts';
import { LIFECYCLE_KINDS } from '../hosts/service.ts';
import { newId, now } from '../ids.ts';
import { placeTenant, recountSuspended } from '../scheduler/place.ts';
import type { SecretService } from '../secrets/service.ts';
import type { OperationsTable, TenantSecretsTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import { operationView, tenantView } from './view.ts';

type CreateRequest = z.output<typeof import('@warren/protocol').CreateTenantRequest>;

export interface TenantServiceDeps {
  db: Db;
  config: ControlPlaneConfig;
  /** Called after desired state on a host changed, to wake its agent. */
  onDesiredChange: (hostId: string) => void;
  /** Seals the token a workload image's tenant is created with (`workloadOf`). */
  secrets?: SecretService;
}

/** Tenant lifecycle: every change writes desired state and an operation in one transaction. */
export class TenantService {
  readonly #d: TenantServiceDeps;

  constructor(deps: TenantServiceDeps) {
    this.#d = deps;
  }

  async view(row: TenantsTable): Promise<Tenant> {
    return tenantView(row, await this.#hostHealthy(row.host_id), defaultIdleTimeoutMs(this.#d.config));
  }

  async list(query: ListTenantsQuery, onlyTenant: string | undefined): Promise<Tenant[]> {
    let q = this.#d.db.selectFrom('tenants').selectAll().orderBy('name');
    if (onlyTenant !== undefined) q = q.where('id', '=', onlyTenant);
    if (query.state) q = q.where('state', '=', query.state);
    if (query.host) {
      const host = query.host;
      q = q.where('host_id', 'in', (eb) =>
        eb
          .selectFrom('hosts')
          .select('id')
          .where((w) => w.or([w('id', '=', host), w('name', '=', host)])),
      );
    }
    const rows = await q.execute();
    const healthy = await this.#healthyHosts();
    const idle = defaultIdleTimeoutMs(this.#d.config);
    return rows.map((r) => tenantView(r, r.host_id !== null && healthy.has(r.host_id), idle));
  }

  async create(input: CreateTenantRequest | CreateRequest): Promise<TenantOperationResponse> {
    const c = this.#d.config;
    const req = input as CreateRequest;
    const quota: Resources = {
      vcpus: req.quota?.vcpus ?? c.quotaVcpus,
      memoryMiB: req.quota?.memoryMiB ?? c.quotaMemoryMiB,
      diskMiB: req.quota?.diskMiB ?? c.quotaDiskMiB,
    };
    const resources: Resources = {
      vcpus: req.vcpus ?? Math.min(c.defaultVcpus, quota.vcpus),
      memoryMiB: req.memoryMiB ?? Math.min(c.defaultMemoryMiB, quota.memoryMiB),
      diskMiB: req.diskMiB ?? Math.min(c.defaultDiskMiB, quota.diskMiB),
    };
    checkQuota(quota, resources, c);
    const since = healthySince(this.#d.config);
    if (req.image !== undefined && req.imageProfile !== undefined) {
      throw new WarrenError('INVALID_ARGUMENT', 'give either image or imageProfile, not both');
    }
    const image = await this.#resolveImage(req.image, since, req.imageProfile);
    const imageId = image.id;
    const t = now();
    const tenant: TenantsTable = {
      id: newId('ten'),
      name: req.name,
      state: 'pending',
      desired_state: 'running',
      generation: 1,
      observed_generation: 0,
      image_id: imageId,
      vcpus: resources.vcpus,
      memory_mib: resources.memoryMiB,
      disk_mib: resources.diskMiB,
      quota_vcpus: quota.vcpus,
      quota_memory_mib: quota.memoryMiB,
      quota_disk_mib: quota.diskMiB,
      host_id: null,
      egress_mode: req.network?.egress ?? 'internet',
      egress_allowlist: JSON.stringify(req.network?.allowlist ?? []),
      bandwidth_mbit: req.network?.bandwidthMbit ?? null,
      dashboard_port: req.dashboardPort ?? DEFAULT_DASHBOARD_PORT,
      last_error_code: null,
      last_error_message: null,
      created_at: t,
      updated_at: t,
      idle_timeout_ms: req.idleTimeout === undefined ? null : idleSetting(req.idleTimeout),
      attempts_count: null,
      next_attempt_at: null,
      skills: JSON.stringify(req.skills ?? []),
      config_values: JSON.stringify(req.config ?? {}),
      config_version: req.config ? 1 : 0,
    };
    const op = operationRow(tenant, 'create', 1, t);
    // A workload image's tenant starts with its own random token (the OpenClaw gateway's auth),
    // sealed like any secret and delivered with them; it never leaves the platform otherwise.
    const workload = workloadOf(image.profile);
    let token: TenantSecretsTable | undefined;
    if (workload && this.#d.secrets) {
      const value = Buffer.from(randomBytes(32).toString('base64url'));
      token = this.#d.secrets.initialRow(tenant.id, workload.tokenSecret, value, t);
      value.fill(0);
      tenant.secrets_generation = 1;
    }
    try {
      await this.#d.db.transaction().execute(async (trx) => {
        const taken = await trx
          .selectFrom('tenants')
          .select('id')
          .where('name', '=', req.name)
          .executeTakeFirst();
        if (taken) throw nameTaken(req.name);
        const { n } = await trx
          .selectFrom('tenants')
          .select((eb) => eb.fn.countAll<number>().as('n'))
          .executeTakeFirstOrThrow();
        if (Number(n) >= c.maxTenants) {
          throw new WarrenError(
            'QUOTA_EXCEEDED',
            `the platform holds at most ${c.maxTenants} tenants (WARREN_MAX_TENANTS)`,
          );
        }
        tenant.host_id = await placeTenant(trx, { resources, imageId, healthySince: since });
        await trx.insertInto('tenants').values(tenant).execute();
        if (token) await trx.insertInto('tenant_secrets').values(token).execute();
        await trx.insertInto('operations').values(op).execute();
      });
    } catch (e) {
      if (isUniqueViolation(e)) throw nameTaken(req.name);
      throw e;
    }
    this.#d.onDesiredChange(tenant.host_id!);
    return {
      tenant: tenantView(tenant, true, defaultIdleTimeoutMs(this.#d.config)),
      operation: operationView(op),
    };
  }

  /**
   * Changes settings that need no new VM: the network policy (the host agent re-applies its
   * firewall at once), the dashboard port and the idle timeout. A new generation tells the
   * agent to act.
   */
  async update(
    row: TenantsTable,
    req: z.output<typeof import('@warren/protocol').UpdateTenantRequest> | UpdateTenantRequest,
  ): Promise<Tenant> {
    const r = req as z.output<typeof import('@warren/protocol').UpdateTenantRequest>;
    const t = now();
    const updated = await this.#d.db.transaction().execute(async (trx) => {
      const cur = await trx.selectFrom('tenants').selectAll().where('id', '=', row.id).executeTakeFirst();
      if (!cur) throw new WarrenError('NOT_FOUND', `no tenant ${row.name}`);
      if (cur.desired_state === 'absent')
        throw new WarrenError('CONFLICT', `tenant ${cur.name} is being deleted`);
      const next: TenantsTable = {
        ...cur,
        ...(r.network
          ? {
              egress_mode: r.network.egress,
              egress_allowlist: JSON.stringify(r.network.allowlist),
              bandwidth_mbit: r.network.bandwidthMbit,
            }
          : {}),
        ...(r.dashboardPort ? { dashboard_port: r.dashboardPort } : {}),
        ...(r.idleTimeout !== undefined
          ? { idle_timeout_ms: r.idleTimeout === null ? null : idleSetting(r.idleTimeout) }
          : {}),
        ...(r.skills !== undefined ? { skills: JSON.stringify(r.skills) } : {}),
        ...(r.config !== undefined ? configChange(cur, r.config) : {}),
        generation: cur.generation + 1,
        updated_at: t,
      };
      await trx
        .updateTable('tenants')
        .set({
          egress_mode: next.egress_mode,
          egress_allowlist: next.egress_allowlist,
          bandwidth_mbit: next.bandwidth_mbit,
          dashboard_port: next.dashboard_port,
          idle_timeout_ms: next.idle_timeout_ms ?? null,
          skills: next.skills ?? '[]',
          config_values: next.config_values ?? '{}',
          config_version: next.config_version ?? 0,
          generation: next.generation,
          updated_at: t,
        })
        .where('id', '=', cur.id)
        .execute();
      return next;
    });
    if (updated.host_id) this.#d.onDesiredChange(updated.host_id);
    return this.view(updated);
  }

  /**
   * Places a lost tenant (its host removed) on another host with the scheduler, booking its
   * capacity: a fresh VM under the same tenant id, desired running, for a restore to fill
   * (backups/service.ts `restore`). Only a lost tenant moves.
   */
  async relocate(row: TenantsTable): Promise<TenantsTable> {
    const t = now();
    const since = healthySince(this.#d.config);
    const moved = await this.#d.db.transaction().execute(async (trx) => {
      const cur = await trx.selectFrom('tenants').selectAll().where('id', '=', row.id).executeTakeFirst();
      if (!cur) throw new WarrenError('NOT_FOUND', `no tenant ${row.name}`);
      if (cur.state !== 'lost' || cur.host_id !== null)
        throw new WarrenError('CONFLICT', `tenant ${cur.name} is ${cur.state}, not lost; it keeps its host`);
      const hostId = await placeTenant(trx, {
        resources: { vcpus: cur.vcpus, memoryMiB: cur.memory_mib, diskMiB: cur.disk_mib },
        imageId: cur.image_id,
        healthySince: since,
      });
      const next: TenantsTable = {
        ...cur,
        host_id: hostId,
        state: 'pending',
        desired_state: 'running',
        generation: cur.generation + 1,
        last_error_code: null,
        last_error_message: null,
        attempts_count: null,
        next_attempt_at: null,
        updated_at: t,
      };
      await trx
        .updateTable('tenants')
        .set({
          host_id: next.host_id,
          state: next.state,
          desired_state: next.desired_state,
          generation: next.generation,
          last_error_code: null,
          last_error_message: null,
          attempts_count: null,
          next_attempt_at: null,
          updated_at: t,
        })
        .where('id', '=', cur.id)
        .execute();
      return next;
    });
    this.#d.onDesiredChange(moved.host_id!);
    return moved;
  }

  /** A suspended tenant's start is an ordinary one: the new generation makes its host wake it. */
  start(row: TenantsTable): Promise<TenantOperationResponse> {
    return this.#setDesired(row, 'running', 'start');
  }

  stop(row: TenantsTable): Promise<TenantOperationResponse> {
    return this.#setDesired(row, 'stopped', 'stop');
  }

  /**
   * Marks the tenant absent; the record goes once its host agent reports the VM gone. A lost
   * tenant (its host removed) has no host to confirm: its record goes at once.
   */
  delete(row: TenantsTable): Promise<TenantOperationResponse> {
    return this.#setDesired(row, 'absent', 'delete');
  }

  async #setDesired(
    row: TenantsTable,
    desired: DesiredState,
    kind: OperationsTable['kind'],
  ): Promise<TenantOperationResponse> {
    const t = now();
    const result = await this.#d.db.transaction().execute(async (trx) => {
      // Re-read inside the transaction: the row the route loaded may be stale by now.
      const cur = await trx.selectFrom('tenants').selectAll().where('id', '=', row.id).executeTakeFirst();
      if (!cur) throw new WarrenError('NOT_FOUND', `no tenant ${row.name}`);
      if (cur.desired_state === 'absent') {
        throw new WarrenError('CONFLICT', `tenant ${cur.name} is being deleted`);
      }
      if (cur.state === 'lost' && kind !== 'delete') {
        throw new WarrenError(
          'HOST_LOST',
          `tenant ${cur.name} was on a host that was removed; restore it from a backup (\`warren tenant restore ${cur.name} BACKUP\`) or delete it`,
        );
      }
      const generation = cur.generation + 1;
      const state = desired === 'absent' ? 'deleting' : cur.state;
      await trx
        .updateTable('tenants')
        .set({ desired_state: desired, generation, state, updated_at: t })
        .where('id', '=', cur.id)
        .execute();
      // A suspended tenant asked to stop or go no longer frees its memory for placement.
      if (cur.host_id && cur.state === 'suspended' && (state !== cur.state || desired !== cur.desired_state))
        await recountSuspended(trx, cur.host_id);
      // A newer intent supersedes older unfinished ones: they will never be observed as such.
      await trx
        .updateTable('operations')
        .set({
          status: 'failed',
          error_code: 'CONFLICT',
          error_message: `superseded by a ${kind} request`,
          updated_at: t,
        })
        .where('tenant_id', '=', cur.id)
        .where('status', '=', 'running')
        // A restore in progress is not an intent about the VM's state; it ends on its own.
        .where('kind', 'in', LIFECYCLE_KINDS)
        .execute();
      const op = operationRow(cur, kind, generation, t);
      if (cur.state === 'lost' && cur.host_id === null) {
        // No host will report the VM gone: the record goes now, as a confirmed deletion would.
        await trx.deleteFrom('tenants').where('id', '=', cur.id).execute();
        await trx.deleteFrom('operations').where('tenant_id', '=', cur.id).execute();
        op.status = 'succeeded';
        await trx.insertInto('operations').values(op).execute();
        return { tenant: { ...cur, desired_state: desired, generation, state, updated_at: t }, op };
      }
      await trx.insertInto('operations').values(op).execute();
      return { tenant: { ...cur, desired_state: desired, generation, state, updated_at: t }, op };
    });
    if (result.tenant.host_id) this.#d.onDesiredChange(result.tenant.host_id);
    return { tenant: await this.view(result.tenant), operation: operationView(result.op) };
  }

  /** Picks the image: a full id or unique prefix known to a healthy host, else `profile`'s (or the default profile's) newest. */
  async #resolveImage(
    ref: string | undefined,
    since: string,
    wantedProfile?: string,
  ): Promise<{ id: string; profile: string }> {
    const rows = await whereHealthy(this.#d.db.selectFrom('hosts').select('images'), since).execute();
    const images = new Map<string, { id: string; profile: string; createdAt: string }>();
    for (const r of rows) {
      for (const i of safeImages(r.images)) images.set(i.id, i);
    }
    const all = [...images.values()];
    if (ref === undefined) {
      const profile = wantedProfile ?? this.#d.config.defaultProfile;
      const newest = all
        .filter((i) => i.profile === profile)
        .sort((a, b) => b.createdAt.localeCompare(a.createdAt))[0];
      if (!newest) {
        throw new WarrenError(
          'IMAGE_NOT_FOUND',
          `no healthy host has an image of the ${wantedProfile ? '' : 'default '}profile "${profile}"; build one on a host (\`warren image build --profile ${profile}\`) or name an image`,
        );
      }
      return newest;
    }
    const wanted = ref.startsWith('sha256:') ? ref : `sha256:${ref}`;
    if (!/^sha256:[0-9a-f]{4,64}$/.test(wanted)) {
      throw new WarrenError('INVALID_ARGUMENT', 'image: give an image id (sha256:…) or a hex prefix of one');
    }
    const matches = all.filter((i) => i.id.startsWith(wanted));
    if (matches.length === 1) return matches[0]!;
    if (matches.length > 1)
      throw new WarrenError('INVALID_ARGUMENT', `image prefix ${ref} is ambiguous; give more digits`);
    throw new WarrenError('IMAGE_NOT_FOUND', `no healthy host has image ${ref}`);
  }

  async #healthyHosts(): Promise<Set<string>> {
    const rows = await whereHealthy(
      this.#d.db.selectFrom('hosts').select('id'),
      healthySince(this.#d.config),
    ).execute();
    return new Set(rows.map((r) => r.id));
  }

  async #hostHealthy(hostId: string | null): Promise<boolean> {
    if (!hostId) return false;
    const row = await whereHealthy(
      this.#d.db.selectFrom('hosts').select('id').where('id', '=', hostId),
      healthySince(this.#d.config),
    ).executeTakeFirst();
    return row !== undefined;
  }
}

function operationRow(
  tenant: Pick<TenantsTable, 'id' | 'name'>,
  kind: string,
  generation: number,
  t: string,
): OperationsTable {
  return {
    id: newId('op'),
    kind,
    tenant_id: tenant.id,
    tenant_name: tenant.name,
    generation,
    status: 'running',
    error_code: null,
    error_message: null,
    created_at: t,
    updated_at: t,
  };
}

/** An idle timeout as the API takes it (already validated) to its column: ms, 0 for never. */
function idleSetting(text: string): number {
  const r = parseIdleTimeout(text);
  if ('error' in r) throw new WarrenError('INVALID_ARGUMENT', `idleTimeout: ${r.error}`);
  return r.ms ?? 0;
}

function nameTaken(name: string): WarrenError {
  return new WarrenError('CONFLICT', `a tenant named ${name} already exists; pick another name`);
}

/** Quota first (the tenant's own limit), then the platform maximum the quota itself must respect. */
export function checkQuota(quota: Resources, r: Resources, c: ControlPlaneConfig): void {
  const limits: [keyof Resources, number, string][] = [
    ['vcpus', c.maxVcpus, 'WARREN_MAX_VCPUS'],
    ['memoryMiB', c.maxMemoryMiB, 'WARREN_MAX_MEMORY_MIB'],
    ['diskMiB', c.maxDiskMiB, 'WARREN_MAX_DISK_MIB'],
  ];
  for (const [k, max, env] of limits) {
    if (quota[k] > max) {
      throw new WarrenError(
        'QUOTA_EXCEEDED',
        `quota.${k} ${quota[k]} exceeds the platform maximum of ${max} (${env})`,
        {
          details: { limit: `platform.${k}`, value: max },
        },
      );
    }
    if (r[k] > quota[k]) {
      throw new WarrenError('QUOTA_EXCEEDED', `${k} ${r[k]} exceeds the tenant's quota of ${quota[k]}`, {
        details: { limit: `quota.${k}`, value: quota[k] },
      });
    }
  }
}

/** The profile of every image any host reports (an image id names the same build everywhere). */
export async function imageProfiles(db: Db): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const r of await db.selectFrom('hosts').select('images').execute())
    for (const i of safeImages(r.images)) if (typeof i?.profile === 'string') out.set(i.id, i.profile);
  return out;
}

export function safeImages(json: string): { id: string; profile: string; createdAt: string }[] {
  try {
    const v = JSON.parse(json);
    return Array.isArray(v) ? v : [];
  } catch {
    return [];
  }
}

/**
 * A tenant's configuration values after an update: each named file's object replaces the
 * tenant's values for that file (null removes them); the values' version grows by one.
 */
function configChange(
  cur: TenantsTable,
  change: Record<string, Record<string, unknown> | null>,
): Pick<TenantsTable, 'config_values' | 'config_version'> {
  let values: Record<string, unknown> = {};
  try {
    values = JSON.parse(cur.config_values ?? '{}');
  } catch {
    // Written only by this code; unreadable means none.
  }
  for (const [file, v] of Object.entries(change)) {
    if (v === null) delete values[file];
    else values[file] = v;
  }
  return { config_values: JSON.stringify(values), config_version: (cur.config_version ?? 0) + 1 };
}
