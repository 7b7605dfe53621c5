import {
  type CgroupState,
  DEFAULT_DASHBOARD_PORT,
  type DesiredTenant,
  ERROR_CODES,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type Host,
  isErrorCode,
  type JoinRequest,
  type JoinResponse,
  type QuarantinedVm,
  type Tenant,
  tenantIdOfVm,
  vmIdOfTenant,
  WarrenError,
} from '@warren/protocol';
import { insertCredential } from '../auth/credentials.ts';
import type { Principal } from '../auth/principal.ts';
import { hashToken } from '../auth/tokens.ts';
import { type ControlPlaneConfig, defaultIdleTimeoutMs } from '../config.ts';
import { newId, now } from '../ids.ts';
import { releaseTenant, suspendedHold } from '../scheduler/place.ts';
import type { SkillService } from '../skills/service.ts';
import type { HostsTable, QuarantinedVmsTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import { safeImages } from '../tenants/service.ts';
import { effectiveIdleTimeoutMs, networkOf, servesRequests, tenantView } from '../tenants/view.ts';
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

  /** Told, after each heartbeat committed, which tenants it changed (the event stream). */
  onHeartbeat: ((hostId: string, tenantIds: string[]) => void) | undefined;
  /** Told of each tenant VM a heartbeat reports newly failed, crashed or unhealthy (metrics). */
  onReportedError: ((code: string) => void) | undefined;
  /** Resolves each tenant's skills and configuration for the desired list (set at start). */
  skills: SkillService | undefined;

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
            susp_tenants: 0,
            susp_vcpus: 0,
            susp_memory_mib: 0,
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
    const idleDefault = defaultIdleTimeoutMs(this.#config);
    const touched: string[] = [];
    const reportedErrors: string[] = [];
    const tenants = await this.#db.transaction().execute(async (trx) => {
      const rows = await trx.selectFrom('tenants').selectAll().where('host_id', '=', hostId).execute();
      const reported = new Map(hb.vms.map((v) => [v.tenantId, v]));
      const keep: DesiredTenant[] = [];
      /** Each kept tenant's state after this heartbeat, for the suspended hold. */
      const states: { state: string; desired_state: string; vcpus: number; memory_mib: number }[] = [];
      for (const row of rows) {
        const vm = reported.get(row.id);
        if (row.desired_state === 'absent' && !vm) {
          // The agent lists every tenant VM it has, in flight or not: absent means gone.
          touched.push(row.id);
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
          idleTimeoutMs: effectiveIdleTimeoutMs(row, idleDefault),
          secretsGeneration: row.secrets_generation ?? 0,
          skills: [],
          config: null,
        });
        if (!vm) {
          states.push(row);
          continue;
        }
        const observed = Math.max(row.observed_generation, vm.generation);
        const state = row.desired_state === 'absent' ? 'deleting' : vm.state;
        states.push({ ...row, state });
        const failing = vm.state === 'failed' || vm.state === 'crashed' || vm.state === 'unhealthy';
        const errorCode = failing
          ? (vm.error?.code ?? (vm.state === 'unhealthy' ? 'GUEST_UNHEALTHY' : 'VM_EXITED'))
          : null;
        const errorMessage = failing
          ? (vm.error?.message ??
            (vm.state === 'unhealthy' ? 'the guest agent stopped answering' : 'the VM stopped unexpectedly'))
          : null;
        const attemptsCount = vm.attempts?.count ?? null;
        const nextAttemptAt = vm.attempts ? vm.attempts.nextAttemptAt : null;
        const changed = state !== row.state || observed !== row.observed_generation;
        // Most heartbeats change nothing: skip the write (and its fsync) unless something did.
        if (
          changed ||
          errorCode !== row.last_error_code ||
          errorMessage !== row.last_error_message ||
          attemptsCount !== (row.attempts_count ?? null) ||
          nextAttemptAt !== (row.next_attempt_at ?? null)
        ) {
          touched.push(row.id);
          await trx
            .updateTable('tenants')
            .set({
              state,
              observed_generation: observed,
              last_error_code: errorCode,
              last_error_message: errorMessage,
              attempts_count: attemptsCount,
              next_attempt_at: nextAttemptAt,
              ...(changed ? { updated_at: t } : {}),
            })
            .where('id', '=', row.id)
            .execute();
        }
        if (state !== row.state && errorCode) reportedErrors.push(errorCode);
        if (state !== row.state) {
          await auditTransition(trx, hostId, row, state, errorCode, errorMessage, t);
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
      // Written after the tenants' states are folded in, so the suspended hold is the one they sum to.
      const hold = suspendedHold(states);
      await trx
        .updateTable('hosts')
        .set({
          ...(hb.address ? { address: hb.address } : {}),
          agent_version: hb.agentVersion,
          cap_vcpus: hb.capacity.vcpus,
          cap_memory_mib: hb.capacity.memoryMiB,
          cap_disk_mib: hb.capacity.diskMiB,
          susp_tenants: hold.tenants,
          susp_vcpus: hold.vcpus,
          susp_memory_mib: hold.memoryMiB,
          health: hb.health,
          images: JSON.stringify(hb.images),
          last_heartbeat_at: t,
        })
        .where('id', '=', hostId)
        .execute();
      await this.#storeQuarantine(trx, hostId, hb.quarantined ?? []);
      const workspace = await this.skills?.desiredFor(
        trx,
        rows.filter((r) => r.desired_state !== 'absent'),
      );
      for (const d of keep) Object.assign(d, workspace?.get(d.tenantId) ?? {});
      return keep;
    });
    this.onHeartbeat?.(hostId, touched);
    for (const code of reportedErrors) this.onReportedError?.(code);
    return { tenants, heartbeatIntervalMs: this.#config.heartbeatIntervalMs };
  }

  /**
   * Replaces the host's quarantine list with the one its heartbeat carried (an older agent
   * sends none: it has no quarantine). Written only when it changed.
   */
  async #storeQuarantine(trx: Db, hostId: string, vms: QuarantinedVm[]): Promise<void> {
    const stored = await trx
      .selectFrom('quarantined_vms')
      .selectAll()
      .where('host_id', '=', hostId)
      .execute();
    const rows: QuarantinedVmsTable[] = vms.map((v) => ({
      host_id: hostId,
      vm_id: v.vmId,
      tenant_id: v.tenantId,
      image_id: v.imageId,
      vcpus: v.vcpus,
      memory_mib: v.memoryMiB,
      disk_mib: v.diskMiB,
      quarantined_at: v.quarantinedAt,
      remove_after: v.removeAfter,
    }));
    // One row per VM id, whatever a confused agent sends.
    const unique = [...new Map(rows.map((r) => [r.vm_id, r])).values()];
    const key = (r: QuarantinedVmsTable) =>
      [
        r.vm_id,
        r.tenant_id,
        r.image_id,
        r.vcpus,
        r.memory_mib,
        r.disk_mib,
        r.quarantined_at,
        r.remove_after,
      ].join('|');
    const same =
      stored.length === unique.length &&
      stored.map(key).sort().join('\n') === unique.map(key).sort().join('\n');
    if (same) return;
    await trx.deleteFrom('quarantined_vms').where('host_id', '=', hostId).execute();
    for (const r of unique) await trx.insertInto('quarantined_vms').values(r).execute();
  }

  async list(): Promise<Host[]> {
    const rows = await this.#db.selectFrom('hosts').selectAll().orderBy('name').execute();
    const counts = await this.#db
      .selectFrom('tenants')
      .select(['host_id', (eb) => eb.fn.countAll<number>().as('n')])
      .groupBy('host_id')
      .execute();
    const n = new Map(counts.map((c) => [c.host_id, Number(c.n)]));
    const quarantined = await this.#quarantineOf(undefined);
    return rows.map((r) => this.view(r, n.get(r.id) ?? 0, quarantined.get(r.id) ?? []));
  }

  async #quarantineOf(hostId: string | undefined): Promise<Map<string, QuarantinedVm[]>> {
    let q = this.#db.selectFrom('quarantined_vms').selectAll().orderBy('quarantined_at').orderBy('vm_id');
    if (hostId !== undefined) q = q.where('host_id', '=', hostId);
    const out = new Map<string, QuarantinedVm[]>();
    for (const r of await q.execute()) {
      const list = out.get(r.host_id) ?? [];
      list.push({
        vmId: r.vm_id,
        tenantId: r.tenant_id,
        imageId: r.image_id,
        vcpus: r.vcpus,
        memoryMiB: r.memory_mib,
        diskMiB: r.disk_mib,
        quarantinedAt: r.quarantined_at,
        removeAfter: r.remove_after,
      });
      out.set(r.host_id, list);
    }
    return out;
  }

  /**
   * Removes a host that is gone for good (admin). Refused while it heartbeats, unless `force`.
   * Its tenants become `lost` (HOST_LOST): their host cleared, their booking gone with the
   * host's row; a restore from a backup places them elsewhere. Tenants already being deleted
   * are gone with it. The host's token stops working, so its agent, if it ever comes back,
   * cannot heartbeat (it joins again as a new host, and quarantines what it still has).
   */
  async remove(ref: string, force: boolean): Promise<{ host: HostsTable; lost: string[] }> {
    const t = now();
    return this.#db.transaction().execute(async (trx) => {
      const host = await trx
        .selectFrom('hosts')
        .selectAll()
        .where((eb) => eb.or([eb('id', '=', ref), eb('name', '=', ref)]))
        .executeTakeFirst();
      if (!host) throw new WarrenError('NOT_FOUND', `no host ${ref}; see \`warren host list\``);
      if (this.isHealthy(host) && !force) {
        throw new WarrenError(
          'CONFLICT',
          `host ${host.name} still heartbeats; removing it marks its tenants lost. Stop its agent first, or pass --force (\`warren host remove ${host.name} --force\`)`,
        );
      }
      const rows = await trx
        .selectFrom('tenants')
        .selectAll()
        .where('host_id', '=', host.id)
        .orderBy('name')
        .execute();
      const lost: string[] = [];
      for (const row of rows) {
        if (row.desired_state === 'absent') {
          await trx.deleteFrom('tenants').where('id', '=', row.id).execute();
          await trx
            .updateTable('operations')
            .set({ status: 'succeeded', updated_at: t })
            .where('tenant_id', '=', row.id)
            .where('kind', '=', 'delete')
            .where('status', '=', 'running')
            .execute();
          continue;
        }
        const message = `host ${host.name} was removed by an admin, and this tenant's VM with it`;
        await trx
          .updateTable('tenants')
          .set({
            state: 'lost',
            host_id: null,
            last_error_code: 'HOST_LOST',
            last_error_message: message,
            attempts_count: null,
            next_attempt_at: null,
            updated_at: t,
          })
          .where('id', '=', row.id)
          .execute();
        await trx
          .updateTable('operations')
          .set({ status: 'failed', error_code: 'HOST_LOST', error_message: message, updated_at: t })
          .where('tenant_id', '=', row.id)
          .where('status', '=', 'running')
          .execute();
        // In the tenant's own trail too (the route's host.remove event names no tenant).
        await trx
          .insertInto('audit_events')
          .values({
            at: t,
            actor: 'admin',
            action: 'tenant.lost',
            target: `${row.name}: ${message}`.slice(0, 200),
            tenant_id: row.id,
            result: 'HOST_LOST',
            status: ERROR_CODES.HOST_LOST.status,
            request_id: '-',
          })
          .execute();
        lost.push(row.name);
      }
      // The host's tokens and quarantine list go with it (ON DELETE CASCADE).
      await trx.deleteFrom('hosts').where('id', '=', host.id).execute();
      return { host, lost };
    });
  }

  /**
   * Adopts a quarantined VM (admin): a tenant with the VM's tenant id, its size and image, on
   * that host, desired `stopped`. The host then finds it in its desired list and keeps it, as
   * the tenant's VM (the VM id derives from the tenant id). Its booking is taken whether or not
   * the host has room: the VM's disk is already there. Refused when that tenant id or the name
   * exists.
   */
  async adopt(ref: string, vmId: string, name: string): Promise<Tenant> {
    const tenantId = tenantIdOfVm(vmId);
    if (!tenantId) {
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `${vmId.slice(0, 64)} is not a tenant VM id (ten- and 16 hex digits)`,
      );
    }
    const t = now();
    const c = this.#config;
    const row = await this.#db.transaction().execute(async (trx) => {
      const host = await trx
        .selectFrom('hosts')
        .selectAll()
        .where((eb) => eb.or([eb('id', '=', ref), eb('name', '=', ref)]))
        .executeTakeFirst();
      if (!host) throw new WarrenError('NOT_FOUND', `no host ${ref}; see \`warren host list\``);
      const vm = await trx
        .selectFrom('quarantined_vms')
        .selectAll()
        .where('host_id', '=', host.id)
        .where('vm_id', '=', vmId)
        .executeTakeFirst();
      if (!vm) {
        throw new WarrenError(
          'NOT_FOUND',
          `host ${host.name} has no quarantined VM ${vmId}; see \`warren host show ${host.name}\``,
        );
      }
      const clash = await trx
        .selectFrom('tenants')
        .select(['id', 'name'])
        .where((eb) => eb.or([eb('id', '=', tenantId), eb('name', '=', name)]))
        .executeTakeFirst();
      if (clash) {
        throw new WarrenError(
          'CONFLICT',
          clash.id === tenantId
            ? `tenant ${clash.name} already has id ${tenantId}: this VM is not an orphan of the control plane; delete or rename that tenant first if it is a stale record`
            : `a tenant named ${name} already exists; pick another name`,
        );
      }
      const tenant: TenantsTable = {
        id: tenantId,
        name,
        state: 'pending',
        desired_state: 'stopped',
        generation: 1,
        observed_generation: 0,
        image_id: vm.image_id,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disk_mib: vm.disk_mib,
        quota_vcpus: Math.max(c.quotaVcpus, vm.vcpus),
        quota_memory_mib: Math.max(c.quotaMemoryMiB, vm.memory_mib),
        quota_disk_mib: Math.max(c.quotaDiskMiB, vm.disk_mib),
        host_id: host.id,
        egress_mode: 'internet',
        egress_allowlist: '[]',
        bandwidth_mbit: null,
        dashboard_port: DEFAULT_DASHBOARD_PORT,
        last_error_code: null,
        last_error_message: null,
        created_at: t,
        updated_at: t,
        idle_timeout_ms: null,
        attempts_count: null,
        next_attempt_at: null,
      };
      await trx.insertInto('tenants').values(tenant).execute();
      await trx
        .updateTable('hosts')
        .set((eb) => ({
          alloc_vcpus: eb('alloc_vcpus', '+', vm.vcpus),
          alloc_memory_mib: eb('alloc_memory_mib', '+', vm.memory_mib),
          alloc_disk_mib: eb('alloc_disk_mib', '+', vm.disk_mib),
        }))
        .where('id', '=', host.id)
        .execute();
      // No longer an orphan: its host lists it among its tenants from the next heartbeat on.
      await trx
        .deleteFrom('quarantined_vms')
        .where('host_id', '=', host.id)
        .where('vm_id', '=', vmId)
        .execute();
      return tenant;
    });
    return tenantView(row, this.isHealthy(await this.find(row.host_id!)), defaultIdleTimeoutMs(this.#config));
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
    return this.view(row, Number(n), (await this.#quarantineOf(row.id)).get(row.id) ?? []);
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
  async liveHostOf(tenant: Pick<TenantsTable, 'name' | 'host_id'> & { state?: string }): Promise<HostsTable> {
    if (tenant.state === 'lost') throw lostError(tenant.name);
    const host = tenant.host_id
      ? await this.#db.selectFrom('hosts').selectAll().where('id', '=', tenant.host_id).executeTakeFirst()
      : undefined;
    if (!host || !this.isHealthy(host)) {
      throw new WarrenError('HOST_UNAVAILABLE', `the host of tenant ${tenant.name} has stopped heartbeating`);
    }
    return host;
  }

  /**
   * The host of a tenant that runs, for calls that need its VM up; TENANT_NOT_RUNNING otherwise.
   * A suspended tenant counts as running: its host wakes the VM for the call (`wakeSlackMs`
   * says how much longer such a call may wait for its first byte).
   */
  async runningHostOf(
    tenant: Pick<TenantsTable, 'name' | 'host_id' | 'state' | 'desired_state'>,
  ): Promise<HostsTable> {
    if (tenant.state === 'lost') throw lostError(tenant.name);
    if (!servesRequests(tenant)) {
      throw new WarrenError('TENANT_NOT_RUNNING', `tenant ${tenant.name} is ${tenant.state}, not running`);
    }
    return this.liveHostOf(tenant);
  }

  /** Extra time for the first byte from a tenant's VM: WARREN_WAKE_TIMEOUT_MS while it is suspended or starting. */
  wakeSlackMs(tenant: Pick<TenantsTable, 'state'>): number {
    return tenant.state === 'suspended' || tenant.state === 'starting' ? this.#config.wakeTimeoutMs : 0;
  }

  isHealthy(row: Pick<HostsTable, 'health' | 'last_heartbeat_at'>): boolean {
    return isHealthy(row, healthySince(this.#config));
  }

  view(r: HostsTable, tenants: number, quarantined: QuarantinedVm[]): Host {
    return {
      id: r.id,
      name: r.name,
      address: r.address,
      capacity: { vcpus: r.cap_vcpus, memoryMiB: r.cap_memory_mib, diskMiB: r.cap_disk_mib },
      allocated: { vcpus: r.alloc_vcpus, memoryMiB: r.alloc_memory_mib, diskMiB: r.alloc_disk_mib },
      suspended: { tenants: r.susp_tenants, vcpus: r.susp_vcpus, memoryMiB: r.susp_memory_mib },
      quarantined,
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

function lostError(name: string): WarrenError {
  return new WarrenError(
    'HOST_LOST',
    `tenant ${name} was on a host that was removed; restore it from a backup (\`warren tenant restore ${name} BACKUP\`) or delete it`,
  );
}

/** States a heartbeat reports that the audit trail records, entering them and leaving them for `running`. */
const WATCHED_STATES = new Set(['unhealthy', 'crashed', 'failed', 'suspended']);
const HEALTH_ACTIONS = [...[...WATCHED_STATES].map((s) => `tenant.${s}`), 'tenant.woke', 'tenant.recovered'];

/**
 * One audit event per health transition a heartbeat reports (a state change, never a repeat):
 * `tenant.unhealthy`, `tenant.crashed`, `tenant.failed`, `tenant.suspended`, and back to running
 * (at once or through `starting`) as `tenant.woke` (from suspended) or `tenant.recovered`. The reason is the error code (result)
 * and its message (in the target, after the tenant's name).
 */
async function auditTransition(
  trx: Db,
  hostId: string,
  row: Pick<TenantsTable, 'id' | 'name' | 'state'>,
  state: string,
  errorCode: string | null,
  errorMessage: string | null,
  at: string,
): Promise<void> {
  let action: string;
  if (WATCHED_STATES.has(state)) action = `tenant.${state}`;
  else if (state !== 'running') return;
  else {
    // Back to running, directly or through `starting` (a restart, a wake): the last health
    // event says whether it was away. Only on entering running, so this read is rare.
    const last = WATCHED_STATES.has(row.state)
      ? `tenant.${row.state}`
      : (
          await trx
            .selectFrom('audit_events')
            .select('action')
            .where('tenant_id', '=', row.id)
            .where('action', 'in', HEALTH_ACTIONS)
            .orderBy('id', 'desc')
            .limit(1)
            .executeTakeFirst()
        )?.action;
    if (last === undefined || last === 'tenant.woke' || last === 'tenant.recovered') return;
    action = last === 'tenant.suspended' ? 'tenant.woke' : 'tenant.recovered';
  }
  const status = errorCode && isErrorCode(errorCode) ? ERROR_CODES[errorCode].status : 200;
  await trx
    .insertInto('audit_events')
    .values({
      at,
      actor: `host:${hostId}`,
      action,
      target: (errorMessage ? `${row.name}: ${errorMessage}` : row.name).slice(0, 200),
      tenant_id: row.id,
      result: errorCode ?? 'ok',
      status,
      request_id: '-',
    })
    .execute();
}
