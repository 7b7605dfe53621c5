import { createHash } from 'node:crypto';
import type { Host, Operation, Tenant } from '@warren/protocol';
import { auditEventView } from '../audit-view.ts';
import type { Db } from '../store/index.ts';
import { operationView } from '../tenants/view.ts';
import type { EventHub } from './hub.ts';

/** What changed, as the writer knows it: tenants by id, hosts (all of them when `true`), the audit log. */
export interface Touch {
  tenants?: Iterable<string | null | undefined>;
  hosts?: Iterable<string> | true;
  audit?: boolean;
}

export interface PublisherDeps {
  db: Db;
  hub: EventHub;
  tenantViews: (rows: string[]) => Promise<Tenant[]>;
  hostViews: (ids: string[] | undefined) => Promise<Host[]>;
  log: (m: string) => void;
}

/** Finished operations remembered (so a later look does not announce them again); the oldest go first. */
const OPERATIONS_REMEMBERED = 10_000;

/**
 * Turns writes into events. Writers only say what they touched, after their transaction
 * committed (`touch`); the publisher reads those resources as the API shows them, compares each
 * with what it last published, and publishes what differs. So an event always carries committed
 * state, a write that changed nothing visible publishes nothing, and a writer cannot get an
 * event's shape wrong. One pass runs at a time, in the order touches came, and touches that
 * arrive meanwhile are merged into the next pass.
 */
export class EventPublisher {
  readonly #d: PublisherDeps;
  /** A digest of the last published view of each tenant, and its state (memory: ~100 bytes a tenant). */
  readonly #tenants = new Map<string, { json: string; state: Tenant['state']; name: string }>();
  /** Each host's last published view (JSON, without the heartbeat time) and health. */
  readonly #hosts = new Map<string, { json: string; health: Host['health']; name: string }>();
  readonly #operations = new Map<string, string>();
  #auditCursor = 0;
  #pending: { tenants: Set<string>; hosts: Set<string> | true | undefined; audit: boolean } = {
    tenants: new Set(),
    hosts: undefined,
    audit: false,
  };
  #running: Promise<void> | undefined;

  constructor(deps: PublisherDeps) {
    this.#d = deps;
  }

  /**
   * Learns the current state without publishing it, so the first change after a start has its
   * `previousState`, and the audit log's history is not announced again.
   */
  async prime(): Promise<void> {
    const ids = (await this.#d.db.selectFrom('tenants').select('id').execute()).map((r) => r.id);
    for (const t of await this.#d.tenantViews(ids)) this.#rememberTenant(t);
    for (const h of await this.#d.hostViews(undefined)) this.#rememberHost(h);
    const last = await this.#d.db
      .selectFrom('audit_events')
      .select('id')
      .orderBy('id', 'desc')
      .limit(1)
      .executeTakeFirst();
    this.#auditCursor = Number(last?.id ?? 0);
    const running = await this.#d.db
      .selectFrom('operations')
      .selectAll()
      .where('status', '=', 'running')
      .execute();
    for (const r of running) this.#operations.set(r.id, digest(operationView(r)));
  }

  touch(t: Touch): void {
    for (const id of t.tenants ?? []) if (id) this.#pending.tenants.add(id);
    if (t.hosts === true) this.#pending.hosts = true;
    else if (t.hosts && this.#pending.hosts !== true) {
      this.#pending.hosts ??= new Set();
      for (const id of t.hosts) this.#pending.hosts.add(id);
    }
    if (t.audit) this.#pending.audit = true;
    this.#running ??= this.#drain().finally(() => {
      this.#running = undefined;
    });
  }

  /** Resolves when every touch so far has been published (tests). */
  async settled(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async #drain(): Promise<void> {
    for (;;) {
      const p = this.#pending;
      if (p.tenants.size === 0 && p.hosts === undefined && !p.audit) return;
      this.#pending = { tenants: new Set(), hosts: undefined, audit: false };
      try {
        // Hosts first: a host whose health changed changes its tenants' `hostHealthy`.
        if (p.hosts !== undefined)
          await this.#publishHosts(p.hosts === true ? undefined : [...p.hosts], p.tenants);
        if (p.tenants.size) await this.#publishTenants([...p.tenants]);
        // Always after tenants: an audit entry about a change follows the change.
        if (p.audit || p.tenants.size) await this.#publishAudit();
      } catch (e) {
        this.#d.log(`event publisher: ${(e as Error)?.stack ?? e}`);
      }
    }
  }

  async #publishHosts(ids: string[] | undefined, tenantsToo: Set<string>): Promise<void> {
    const views = await this.#d.hostViews(ids);
    const seen = new Set<string>();
    for (const host of views) {
      seen.add(host.id);
      const before = this.#hosts.get(host.id);
      const json = hostSignature(host);
      if (before?.json === json) continue;
      this.#rememberHost(host);
      this.#d.hub.publish({
        type: 'host.updated',
        tenantId: null,
        data: { host, previousHealth: before?.health ?? null },
      });
      if (before && before.health !== host.health) {
        const rows = await this.#d.db
          .selectFrom('tenants')
          .select('id')
          .where('host_id', '=', host.id)
          .execute();
        for (const r of rows) tenantsToo.add(r.id);
      }
    }
    for (const [id, before] of this.#hosts) {
      if (seen.has(id) || (ids && !ids.includes(id))) continue;
      this.#hosts.delete(id);
      this.#d.hub.publish({
        type: 'host.removed',
        tenantId: null,
        data: { hostId: id, hostName: before.name },
      });
    }
  }

  async #publishTenants(ids: string[]): Promise<void> {
    const views = new Map((await this.#d.tenantViews(ids)).map((t) => [t.id, t]));
    for (const id of ids) {
      const tenant = views.get(id);
      const before = this.#tenants.get(id);
      if (tenant) {
        const json = digest(tenant);
        if (before?.json !== json) {
          this.#rememberTenant(tenant);
          this.#d.hub.publish({
            type: 'tenant.updated',
            tenantId: id,
            data: { tenant, previousState: before?.state ?? null },
          });
        }
      }
      await this.#publishOperations(id);
      if (!tenant && before) {
        this.#tenants.delete(id);
        this.#d.hub.publish({
          type: 'tenant.deleted',
          tenantId: id,
          data: { tenantId: id, tenantName: before.name },
        });
      }
    }
  }

  /** The tenant's operations that are running or changed since they were last published. */
  async #publishOperations(tenantId: string): Promise<void> {
    const rows = await this.#d.db
      .selectFrom('operations')
      .selectAll()
      .where('tenant_id', '=', tenantId)
      .orderBy('created_at', 'desc')
      .limit(20)
      .execute();
    for (const row of rows.reverse()) {
      const operation: Operation = operationView(row);
      const json = digest(operation);
      const before = this.#operations.get(row.id);
      if (before === json) continue;
      // An operation first seen already finished, and older than this process's memory of
      // them, is history, not news.
      if (before === undefined && operation.status !== 'running' && this.#isOld(operation)) continue;
      this.#operations.delete(row.id);
      this.#operations.set(row.id, json);
      if (this.#operations.size > OPERATIONS_REMEMBERED) {
        this.#operations.delete(this.#operations.keys().next().value!);
      }
      this.#d.hub.publish({ type: 'operation.updated', tenantId, data: { operation } });
    }
  }

  #isOld(op: Operation): boolean {
    return Date.now() - Date.parse(op.updatedAt) > 60_000;
  }

  async #publishAudit(): Promise<void> {
    for (;;) {
      const rows = await this.#d.db
        .selectFrom('audit_events')
        .selectAll()
        .where('id', '>', this.#auditCursor)
        .orderBy('id')
        .limit(500)
        .execute();
      for (const r of rows) {
        this.#auditCursor = Number(r.id);
        this.#d.hub.publish({
          type: 'audit.recorded',
          tenantId: r.tenant_id,
          data: { event: auditEventView(r) },
        });
      }
      if (rows.length < 500) return;
    }
  }

  #rememberTenant(t: Tenant): void {
    this.#tenants.set(t.id, { json: digest(t), state: t.state, name: t.name });
  }

  #rememberHost(h: Host): void {
    this.#hosts.set(h.id, { json: hostSignature(h), health: h.health, name: h.name });
  }
}

/** A host's view without its heartbeat time, which changes every few seconds and is no news. */
function hostSignature(h: Host): string {
  const { lastHeartbeatAt: _, ...rest } = h;
  return digest(rest);
}

/** What the publisher remembers of a resource it published: enough to tell whether it changed. */
function digest(view: unknown): string {
  return createHash('sha1').update(JSON.stringify(view)).digest('base64');
}
