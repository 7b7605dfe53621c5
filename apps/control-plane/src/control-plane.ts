import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createObjectStore } from '@warren/object-store';
import { AgentClient } from './agents/agent-client.ts';
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
import { HostService, LIFECYCLE_KINDS } from './hosts/service.ts';
import { now } from './ids.ts';
import { pruneHistory } from './retention.ts';
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
  credentials: BootstrapResult;
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
  options: { dialect?: StoreDialect; log?: (m: string) => void; backupFormat?: BackupFormat } = {},
): Promise<ControlPlane> {
  const log = options.log ?? (() => {});
  // Before the store opens: a master key that is refused stops the start with nothing changed.
  const masterKey = await loadMasterKey(masterKeyFileOf(config), log);
  const store = await openStore(options.dialect ?? dialectFromConfig(config));
  const credentials = await bootstrapCredentials(store.db, stateDirOf(config));
  const agents = new AgentClient();
  const hosts = new HostService(store.db, config);
  const tenants = new TenantService({
    db: store.db,
    config,
    onDesiredChange: (hostId) => {
      void store.db
        .selectFrom('hosts')
        .selectAll()
        .where('id', '=', hostId)
        .executeTakeFirst()
        .then((h) => h && agents.wake(h))
        .catch(() => {});
    },
  });
  const rateLimiter = new RateLimiter(config.rateLimitPerSecond, config.rateLimitBurst);
  const streams = new TenantStreams({
    exec: config.tenantMaxExecs,
    dashboard: config.tenantMaxDashboardStreams,
  });
  const locks = new TenantLocks();
  const snapshots = new SnapshotService({ db: store.db, hosts, agents });
  const tenantSessions = new TenantSessionService({ db: store.db, config, snapshots, locks, log });
  const objects = createObjectStore(objectStoreConfigOf(config));
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
    log,
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
    },
    log,
  );
  const sweeper = setInterval(() => {
    void failOverdueOperations(store, config).catch((e) => log(`operation sweeper: ${e}`));
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
    credentials,
    async listen() {
      await server.app.listen({ host: config.host, port: config.port });
      const addr = server.app.server.address();
      const port = typeof addr === 'object' && addr ? addr.port : config.port;
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
      await objects.close();
      await store.close();
    },
  };
}

/** Operations that never converged (host gone, VM never came up) end as TIMEOUT, not forever running. */
async function failOverdueOperations(store: Store, config: ControlPlaneConfig): Promise<void> {
  const cutoff = new Date(Date.now() - config.operationTimeoutMs).toISOString();
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
}
