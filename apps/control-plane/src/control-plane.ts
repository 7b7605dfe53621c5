import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createObjectStore } from '@warren/object-store';
import type { Host, Tenant } from '@warren/protocol';
import type { Logger } from '@warren/telemetry';
import { AgentClient } from './agents/agent-client.ts';
import { dashboardOriginOf } from './api/dashboard-host.ts';
import { RateLimiter } from './api/rate-limit.ts';
import { type ApiServer, createApiServer } from './api/server.ts';
import { type BootstrapResult, bootstrapCredentials } from './auth/bootstrap.ts';
import { deleteExpiredConsoleSessions } from './auth/console.ts';
import { deleteExpiredSessions } from './auth/sessions.ts';
import type { BackupFormat } from './backups/format.ts';
import { libraryFormat } from './backups/library-format.ts';
import { loadMasterKey } from './backups/master-key.ts';
import { BackupService } from './backups/service.ts';
import { type ControlPlaneConfig, masterKeyFileOf, objectStoreConfigOf, stateDirOf } from './config.ts';
import { EventHub } from './events/hub.ts';
import { EventPublisher } from './events/publisher.ts';
import { HostService, LIFECYCLE_KINDS } from './hosts/service.ts';
import { now } from './ids.ts';
import { type ControlPlaneMetrics, createMetrics } from './metrics.ts';
import { pruneHistory } from './retention.ts';
import { imageSeed } from './secrets/rotate.ts';
import { SecretService } from './secrets/service.ts';
import { SkillService } from './skills/service.ts';
import { dialectFromConfig, openStore, type Store, type StoreDialect } from './store/index.ts';
import { TenantLocks, TenantStreams } from './tenants/concurrency.ts';
import { TenantService } from './tenants/service.ts';
import { TenantSessionService } from './tenants/sessions.ts';
import { SnapshotService } from './tenants/snapshots.ts';

export interface ControlPlane extends ApiServer {
  config: ControlPlaneConfig;
  store: Store;
  tenants: TenantService;
  hosts: HostService;
  /** Safe-YOLO sessions; tests drive the expiry sweep through `tenantSessions.expire(at)`. */
  tenantSessions: TenantSessionService;
  /** Backups, restores, schedules and GC; tests drive the scheduler through `backups.schedule.tick(at)`. */
  backups: BackupService;
  secrets: SecretService;
  credentials: BootstrapResult;
  /** The event stream (`GET /v1/events`); tests wait on `events.settled()`. */
  hub: EventHub;
  events: EventPublisher;
  metrics: ControlPlaneMetrics;
  /** Listens on the configured host and port; returns the API's base URL and writes api.json. */
  listen(): Promise<string>;
  close(): Promise<void>;
}

/**
 * Wires the control plane from validated configuration: store (migrated), credentials
 * (created on first start), services, API, and the sweeper that fails overdue operations and
 * prunes old history.
 */
export async function openControlPlane(
  config: ControlPlaneConfig,
  options: {
    dialect?: StoreDialect;
    log?: (m: string) => void;
    /** The daemon's structured logger, also Fastify's (request lines); none in tests in process. */
    logger?: Logger;
    backupFormat?: BackupFormat;
  } = {},
): Promise<ControlPlane> {
  const log = options.log ?? (() => {});
  // Before the store opens: a master key that is refused stops the start with nothing changed.
  const masterKey = await loadMasterKey(masterKeyFileOf(config), log);
  const store = await openStore(options.dialect ?? dialectFromConfig(config));
  const credentials = await bootstrapCredentials(store.db, stateDirOf(config));
  const agents = new AgentClient();
  const hosts = new HostService(store.db, config);
  const wakeHost = (hostId: string) => {
    void store.db
      .selectFrom('hosts')
      .selectAll()
      .where('id', '=', hostId)
      .executeTakeFirst()
      .then((h) => h && agents.wake(h))
      .catch(() => {});
  };
  const secrets = new SecretService({ db: store.db, masterKey, onChange: wakeHost });
  const tenants = new TenantService({ db: store.db, config, onDesiredChange: wakeHost, secrets });
  const hub = new EventHub({ bufferSize: config.eventsBuffer, queueLimit: config.eventsClientQueue });
  const events = new EventPublisher({
    db: store.db,
    hub,
    tenantViews: (ids) => tenantViews(store, tenants, ids),
    hostViews: async (ids) => {
      if (ids?.length === 1)
        return hosts.get(ids[0]!).then(
          (h) => [h],
          () => [] as Host[],
        );
      const all = await hosts.list();
      return ids ? all.filter((h) => ids.includes(h.id)) : all;
    },
    log,
  });
  await events.prime();
  const metrics = createMetrics({ db: store.db, config, hub });
  hosts.onHeartbeat = (hostId, changed) => events.touch({ tenants: changed, hosts: [hostId] });
  hosts.onReportedError = (code) => metrics.reportedErrors.inc({ code });
  const rateLimiter = new RateLimiter(config.rateLimitPerSecond, config.rateLimitBurst);
  const streams = new TenantStreams({
    exec: config.tenantMaxExecs,
    dashboard: config.tenantMaxDashboardStreams,
  });
  const locks = new TenantLocks();
  const snapshots = new SnapshotService({ db: store.db, hosts, agents });
  const tenantSessions = new TenantSessionService({ db: store.db, config, snapshots, locks, log });
  const objects = createObjectStore(objectStoreConfigOf(config));
  const skills = new SkillService({ db: store.db, objects });
  hosts.skills = skills;
  const backups = new BackupService({
    db: store.db,
    config,
    hosts,
    agents,
    tenants,
    locks,
    store: objects,
    format: options.backupFormat ?? libraryFormat(),
    masterKey,
    imageSeed: await imageSeed(store.db, masterKey),
    log,
    onOperationChange: (tenantId) => events.touch({ tenants: [tenantId] }),
  });
  await backups.reconcile();
  const server = createApiServer(
    {
      db: store.db,
      config,
      tenants,
      hosts,
      agents,
      rateLimiter,
      streams,
      locks,
      snapshots,
      tenantSessions,
      backups,
      hub,
      events,
      metrics,
      secrets,
      skills,
    },
    log,
    options.logger,
  );
  const sweeper = setInterval(() => {
    void failOverdueOperations(store, config)
      .then((tenantIds) => events.touch({ tenants: tenantIds }))
      .catch((e) => log(`operation sweeper: ${e}`));
    // Hosts go unhealthy by not heartbeating, which no write announces; and sweepers write audit entries.
    events.touch({ hosts: true, audit: true });
    // Expired sessions are refused anyway; this only keeps the table small.
    void deleteExpiredSessions(store.db).catch((e) => log(`session sweeper: ${e}`));
    void deleteExpiredConsoleSessions(store.db).catch((e) => log(`console session sweeper: ${e}`));
    void pruneHistory(store.db, config).catch((e) => log(`retention sweeper: ${e}`));
    // Each expired safe-YOLO session is ended and reverted; failures are logged per session.
    void tenantSessions.sweep().catch((e) => log(`session expiry sweeper: ${e}`));
  }, 5_000);
  sweeper.unref();
  let scheduling = false;
  const scheduler =
    config.backupScheduleMs > 0
      ? setInterval(() => {
          // One pass at a time: a pass waits on GC and host calls.
          if (scheduling) return;
          scheduling = true;
          void backups.schedule
            .tick()
            .catch((e) => log(`backup scheduler: ${e}`))
            .finally(() => (scheduling = false));
        }, config.backupScheduleMs)
      : undefined;
  scheduler?.unref();
  let closed = false;
  return {
    ...server,
    config,
    store,
    tenants,
    hosts,
    tenantSessions,
    backups,
    secrets,
    credentials,
    hub,
    events,
    metrics,
    async listen() {
      await server.app.listen({ host: config.host, port: config.port });
      const addr = server.app.server.address();
      const port = typeof addr === 'object' && addr ? addr.port : config.port;
      skills.dashboardOrigin = (name) => dashboardOriginOf(config, name, port);
      const host = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host;
      const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
      const path = join(stateDirOf(config), 'api.json');
      await writeFile(`${path}.tmp`, `${JSON.stringify({ url, pid: process.pid }, null, 2)}\n`);
      await rename(`${path}.tmp`, path);
      return url;
    },
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(sweeper);
      clearInterval(scheduler);
      await backups.close();
      await server.app.close();
      // A publishing pass in flight reads the store: let it finish first.
      await events.settled();
      await objects.close();
      await store.close();
    },
  };
}

/** Views of the tenants with these ids, in chunks (SQL has a limit on bound values). */
async function tenantViews(store: Store, tenants: TenantService, ids: string[]): Promise<Tenant[]> {
  const out: Tenant[] = [];
  for (let i = 0; i < ids.length; i += 500) {
    const rows = await store.db
      .selectFrom('tenants')
      .selectAll()
      .where('id', 'in', ids.slice(i, i + 500))
      .execute();
    for (const r of rows) out.push(await tenants.view(r));
  }
  return out;
}

/**
 * Operations that never converged (host gone, VM never came up) end as TIMEOUT, not forever
 * running. Returns the tenants whose operations it ended.
 */
async function failOverdueOperations(store: Store, config: ControlPlaneConfig): Promise<string[]> {
  const cutoff = new Date(Date.now() - config.operationTimeoutMs).toISOString();
  const overdue = await store.db
    .selectFrom('operations')
    .select('tenant_id')
    .where('status', '=', 'running')
    .where('kind', 'in', LIFECYCLE_KINDS)
    .where('created_at', '<', cutoff)
    .execute();
  if (overdue.length === 0) return [];
  await store.db
    .updateTable('operations')
    .set({
      status: 'failed',
      error_code: 'TIMEOUT',
      error_message: `not converged within ${config.operationTimeoutMs} ms; check the tenant's host (\`warren host list\`)`,
      updated_at: now(),
    })
    .where('status', '=', 'running')
    // Restores have their own deadline (WARREN_BACKUP_JOB_TIMEOUT_MS, tenants/backups.ts).
    .where('kind', 'in', LIFECYCLE_KINDS)
    .where('created_at', '<', cutoff)
    .execute();
  return overdue.map((o) => o.tenant_id);
}
