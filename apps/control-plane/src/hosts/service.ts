import {
  type CgroupState,
  type DesiredTenant,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type Host,
  type JoinRequest,
  type JoinResponse,
  vmIdOfTenant,
  WarrenError,
} from '@warren/protocol';
import { insertCredential } from '../auth/credentials.ts';
import type { Principal } from '../auth/principal.ts';
import { hashToken } from '../auth/tokens.ts';
import type { ControlPlaneConfig } from '../config.ts';
import { newId, now } from '../ids.ts';
import { releaseTenant } from '../scheduler/place.ts';
import type { HostsTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import { safeImages } from '../tenants/service.ts';
import { networkOf } from '../tenants/view.ts';
import { healthySince, isHealthy } from './health.ts';

type JoinPrincipal = Extract<Principal, { kind: 'join' }>;

/** Host agents: joining, heartbeats (which carry actual state and return desired state), views. */
/** The operations a heartbeat completes; `restore` is the backup service's. */
export const LIFECYCLE_KINDS = ['create', 'start', 'stop', 'delete'];

export class HostService {
  readonly #db: Db;
  readonly #config: ControlPlaneConfig;
  /**
   * Each host's cgroup state from its last heartbeat. Kept in memory until the hosts table has a
   * column for it: after a restart a host shows `unknown` for one heartbeat interval.
   */
  readonly #cgroups = new Map<string, CgroupState>();
  /** Each host's VMM driver from its last heartbeat; in memory like `#cgroups`, for the same reason. */
  readonly #vmms = new Map<string, string>();

  constructor(db: Db, config: ControlPlaneConfig) {
    this.#db = db;
    this.#config = config;
  }

  /**
   * A host joins with a join token. A name that has joined before belongs to that host: joining
   * under it again (an agent that lost its host token, a replacement machine) takes the record
   * over, with its tenants, so it needs proof: the host's current token in `hostToken`, or a
   * join token an admin made for exactly this host (`POST /v1/hosts/{host}/rejoin`). Without
   * that, anyone holding the join token could redirect a host's exec and file traffic to an
   * address of their choosing. A re-join keeps the host id and tenants and rotates the host
   * token. A single-use join token is consumed in the same transaction, so it joins once.
   */
  async join(req: JoinRequest, by: JoinPrincipal): Promise<JoinResponse> {
    const t = now();
    return this.#db.transaction().execute(async (trx) => {
      const existing = await trx
        .selectFrom('hosts')
        .select(['id', 'name'])
        .where('name', '=', req.name)
        .executeTakeFirst();
      if (by.hostId !== undefined && existing?.id !== by.hostId) {
        const bound = await trx
          .selectFrom('hosts')
          .select('name')
          .where('id', '=', by.hostId)
          .executeTakeFirst();
        throw new WarrenError(
          'FORBIDDEN',
          `this join token re-joins host ${bound?.name ?? by.hostId} only, not ${req.name}`,
        );
      }
      if (
        existing &&
        by.hostId === undefined &&
        !(await this.#holdsHostToken(trx, existing.id, req.hostToken))
      ) {
        throw new WarrenError(
          'HOST_EXISTS',
          `host ${req.name} has already joined; joining under its name again needs its own host token, or a re-join token from \`warren host rejoin ${req.name}\``,
        );
      }
      if (by.singleUse) {
        const used = await trx.deleteFrom('api_keys').where('id', '=', by.keyId).executeTakeFirst();
        // Another join took it first (both authenticated before either committed).
        if (Number(used.numDeletedRows) === 0) {
          throw new WarrenError('UNAUTHENTICATED', 'invalid or revoked token');
        }
      }
      const id = existing?.id ?? newId('host');
      if (existing) {
        await trx
          .updateTable('hosts')
          .set({
            address: req.address,
            agent_token: req.agentToken,
            agent_version: req.agentVersion,
            cap_vcpus: req.capacity.vcpus,
            cap_memory_mib: req.capacity.memoryMiB,
            cap_disk_mib: req.capacity.diskMiB,
          })
          .where('id', '=', id)
          .execute();
        // The old host token, and any re-join token still out for this host.
        await trx.deleteFrom('api_keys').where('host_id', '=', id).execute();
      } else {
        await trx
          .insertInto('hosts')
          .values({
            id,
            name: req.name,
            address: req.address,
            agent_token: req.agentToken,
            cap_vcpus: req.capacity.vcpus,
            cap_memory_mib: req.capacity.memoryMiB,
            cap_disk_mib: req.capacity.diskMiB,
            alloc_vcpus: 0,
            alloc_memory_mib: 0,
            alloc_disk_mib: 0,
            health: 'ok',
            draining: 0,
            agent_version: req.agentVersion,
            images: '[]',
            last_heartbeat_at: null,
            created_at: t,
          })
          .execute();
      }
      const { token } = await insertCredential(trx, { kind: 'host', name: `host ${req.name}`, hostId: id });
      return { hostId: id, token, heartbeatIntervalMs: this.#config.heartbeatIntervalMs };
    });
  }

  async #holdsHostToken(db: Db, hostId: string, token: string | undefined): Promise<boolean> {
    if (token === undefined) return false;
    const row = await db
      .selectFrom('api_keys')
      .select('id')
      .where('kind', '=', 'host')
      .where('host_id', '=', hostId)
      .where('token_hash', '=', hashToken(token))
      .executeTakeFirst();
    return row !== undefined;
  }

  /**
   * One heartbeat, one transaction: record the host's capacity and images, fold each VM's
   * reported state into its tenant, finish the operations it completes, drop tenants whose
   * deletion the agent confirmed, and answer with the host's complete desired state.
   */
  async heartbeat(hostId: string, hb: HeartbeatRequest): Promise<HeartbeatResponse> {
    const t = now();
    if (hb.cgroups) this.#cgroups.set(hostId, hb.cgroups);
    if (hb.vmm) this.#vmms.set(hostId, hb.vmm);
    const tenants = await this.#db.transaction().execute(async (trx) => {
      await trx
        .updateTable('hosts')
        .set({
          ...(hb.address ? { address: hb.address } : {}),
          agent_version: hb.agentVersion,
          cap_vcpus: hb.capacity.vcpus,
          cap_memory_mib: hb.capacity.memoryMiB,
          cap_disk_mib: hb.capacity.diskMiB,
          health: hb.health,
          images: JSON.stringify(hb.images),
          last_heartbeat_at: t,
        })
        .where('id', '=', hostId)
        .execute();
      const rows = await trx.selectFrom('tenants').selectAll().where('host_id', '=', hostId).execute();
      const reported = new Map(hb.vms.map((v) => [v.tenantId, v]));
      const keep: DesiredTenant[] = [];
      for (const row of rows) {
        const vm = reported.get(row.id);
        if (row.desired_state === 'absent' && !vm) {
          // The agent lists every tenant VM it has, in flight or not: absent means gone.
          await trx.deleteFrom('tenants').where('id', '=', row.id).execute();
          await trx
            .deleteFrom('operations')
            .where('tenant_id', '=', row.id)
            .where('kind', '!=', 'delete')
            .execute();
          await trx
            .updateTable('operations')
            .set({ status: 'succeeded', updated_at: t })
            .where('tenant_id', '=', row.id)
            .where('kind', '=', 'delete')
            .where('status', '=', 'running')
            .execute();
          await releaseTenant(trx, hostId, {
            vcpus: row.vcpus,
            memoryMiB: row.memory_mib,
            diskMiB: row.disk_mib,
          });
          continue;
        }
        keep.push({
          tenantId: row.id,
          vmId: vmIdOfTenant(row.id),
          name: row.name,
          desiredState: row.desired_state as DesiredTenant['desiredState'],
          imageId: row.image_id,
          vcpus: row.vcpus,
          memoryMiB: row.memory_mib,
          diskMiB: row.disk_mib,
          network: networkOf(row),
          dashboardPort: row.dashboard_port,
          generation: row.generation,
          idleTimeoutMs: null,
        });
        if (!vm) continue;
        const observed = Math.max(row.observed_generation, vm.generation);
        const state = row.desired_state === 'absent' ? 'deleting' : vm.state;
        const failing = vm.state === 'failed' || vm.state === 'crashed';
        const errorCode = failing ? (vm.error?.code ?? 'VM_EXITED') : null;
        const errorMessage = failing ? (vm.error?.message ?? 'the VM stopped unexpectedly') : null;
        const changed = state !== row.state || observed !== row.observed_generation;
        // Most heartbeats change nothing: skip the write (and its fsync) unless something did.
        if (changed || errorCode !== row.last_error_code || errorMessage !== row.last_error_message) {
          await trx
            .updateTable('tenants')
            .set({
              state,
              observed_generation: observed,
              last_error_code: errorCode,
              last_error_message: errorMessage,
              ...(changed ? { updated_at: t } : {}),
            })
            .where('id', '=', row.id)
            .execute();
        }
        if (observed <= row.observed_generation && state === row.state) continue;
        // Operations whose generation the agent has acted on can end.
        const ops = await trx
          .selectFrom('operations')
          .selectAll()
          .where('tenant_id', '=', row.id)
          .where('status', '=', 'running')
          .where('generation', '<=', vm.generation)
          // A restore ends with its host job (tenants/backups.ts), not with a generation.
          .where('kind', 'in', LIFECYCLE_KINDS)
          .execute();
        for (const op of ops) {
          const target = op.kind === 'stop' ? 'stopped' : op.kind === 'delete' ? null : 'running';
          if (target && vm.state === target) {
            await trx
              .updateTable('operations')
              .set({ status: 'succeeded', updated_at: t })
              .where('id', '=', op.id)
              .execute();
          } else if (vm.state === 'failed') {
            await trx
              .updateTable('operations')
              .set({
                status: 'failed',
                error_code: vm.error?.code ?? 'INTERNAL',
                error_message: vm.error?.message ?? 'the host agent reported a failure',
                updated_at: t,
              })
              .where('id', '=', op.id)
              .execute();
          }
        }
      }
      return keep;
    });
    return { tenants, heartbeatIntervalMs: this.#config.heartbeatIntervalMs };
  }

  async list(): Promise<Host[]> {
    const rows = await this.#db.selectFrom('hosts').selectAll().orderBy('name').execute();
    const counts = await this.#db
      .selectFrom('tenants')
      .select(['host_id', (eb) => eb.fn.countAll<number>().as('n')])
      .groupBy('host_id')
      .execute();
    const n = new Map(counts.map((c) => [c.host_id, Number(c.n)]));
    return rows.map((r) => this.view(r, n.get(r.id) ?? 0));
  }

  async find(ref: string): Promise<HostsTable> {
    const row = await this.#db
      .selectFrom('hosts')
      .selectAll()
      .where((eb) => eb.or([eb('id', '=', ref), eb('name', '=', ref)]))
      .executeTakeFirst();
    if (!row) throw new WarrenError('NOT_FOUND', `no host ${ref}; see \`warren host list\``);
    return row;
  }

  async get(ref: string): Promise<Host> {
    const row = await this.find(ref);
    const { n } = await this.#db
      .selectFrom('tenants')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('host_id', '=', row.id)
      .executeTakeFirstOrThrow();
    return this.view(row, Number(n));
  }

  /** A draining host keeps its tenants but gets no new ones. */
  async drain(ref: string, draining: boolean): Promise<Host> {
    const row = await this.find(ref);
    await this.#db
      .updateTable('hosts')
      .set({ draining: draining ? 1 : 0 })
      .where('id', '=', row.id)
      .execute();
    return this.get(row.id);
  }

  /** The host a tenant runs on, for calls to its agent; HOST_UNAVAILABLE when it stopped heartbeating. */
  async liveHostOf(tenant: Pick<TenantsTable, 'name' | 'host_id'>): Promise<HostsTable> {
    const host = tenant.host_id
      ? await this.#db.selectFrom('hosts').selectAll().where('id', '=', tenant.host_id).executeTakeFirst()
      : undefined;
    if (!host || !this.isHealthy(host)) {
      throw new WarrenError('HOST_UNAVAILABLE', `the host of tenant ${tenant.name} has stopped heartbeating`);
    }
    return host;
  }

  /** The host of a tenant that runs, for calls that need its VM up; TENANT_NOT_RUNNING otherwise. */
  async runningHostOf(
    tenant: Pick<TenantsTable, 'name' | 'host_id' | 'state' | 'desired_state'>,
  ): Promise<HostsTable> {
    if (tenant.desired_state !== 'running' || tenant.state !== 'running') {
      throw new WarrenError('TENANT_NOT_RUNNING', `tenant ${tenant.name} is ${tenant.state}, not running`);
    }
    return this.liveHostOf(tenant);
  }

  isHealthy(row: Pick<HostsTable, 'health' | 'last_heartbeat_at'>): boolean {
    return isHealthy(row, healthySince(this.#config));
  }

  view(r: HostsTable, tenants: number): Host {
    return {
      id: r.id,
      name: r.name,
      address: r.address,
      capacity: { vcpus: r.cap_vcpus, memoryMiB: r.cap_memory_mib, diskMiB: r.cap_disk_mib },
      allocated: { vcpus: r.alloc_vcpus, memoryMiB: r.alloc_memory_mib, diskMiB: r.alloc_disk_mib },
      health: this.isHealthy(r) ? 'healthy' : 'unhealthy',
      draining: r.draining === 1,
      agentVersion: r.agent_version,
      cgroups: this.#cgroups.get(r.id) ?? 'unknown',
      vmm: this.#vmms.get(r.id) ?? 'unknown',
      images: safeImages(r.images).map((i) => i.id),
      tenants,
      lastHeartbeatAt: r.last_heartbeat_at,
      createdAt: r.created_at,
    };
  }
}
