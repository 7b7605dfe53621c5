import { OBJECT_STORE_ENV, objectStoreSettingIssues, objectStoreSettings } from '@warren/object-store/config';
import {
  parseIdleTimeout,
  RESOURCE_LIMITS,
  type ResourceKind,
  WAKE_TIMEOUT_MS,
  WarrenError,
} from '@warren/protocol';
import { LOG_FORMATS, LOG_LEVELS } from '@warren/telemetry';
import { z } from 'zod';

/** A setting that is an amount of a tenant resource, within the protocol's bounds for it. */
const amount = (resource: ResourceKind) =>
  z.coerce.number().int().min(RESOURCE_LIMITS[resource].min).max(RESOURCE_LIMITS[resource].max);

/**
 * All control-plane settings, validated once at start. Each comes from the environment
 * variable in its comment and has a default that works on one machine; docs/configuration.md
 * lists them.
 */
export const ControlPlaneConfig = z.strictObject({
  /** WARREN_DATA_DIR: state lives in `<dataDir>/control-plane/` (database, token files). */
  dataDir: z.string().startsWith('/').default('/var/lib/warren'),
  /** WARREN_API_HOST: address the API listens on. Loopback by default: expose it on purpose. */
  host: z.string().min(1).default('127.0.0.1'),
  /** WARREN_API_PORT: TCP port of the API (0 picks a free one, for tests). */
  port: z.coerce.number().int().min(0).max(65535).default(7070),
  /** WARREN_STORE: metadata store dialect. SQLite is embedded; PostgreSQL comes next. */
  store: z.enum(['sqlite']).default('sqlite'),
  /** WARREN_SQLITE_PATH: the SQLite database file; `<dataDir>/control-plane/warren.db` when unset. */
  sqlitePath: z.string().startsWith('/').optional(),
  /** WARREN_BODY_LIMIT_BYTES: largest JSON request body. */
  bodyLimitBytes: z.coerce
    .number()
    .int()
    .min(1024)
    .max(64 * 1024 * 1024)
    .default(1024 * 1024),
  /** WARREN_UPLOAD_LIMIT_BYTES: largest file upload into a tenant's VM. */
  uploadLimitBytes: z.coerce
    .number()
    .int()
    .min(1024)
    .default(1024 * 1024 * 1024),
  /** WARREN_HEARTBEAT_TIMEOUT_MS: a host silent for longer is unhealthy and gets no new tenants. */
  heartbeatTimeoutMs: z.coerce.number().int().min(1000).default(15_000),
  /** WARREN_HEARTBEAT_INTERVAL_MS: how often host agents are told to heartbeat. */
  heartbeatIntervalMs: z.coerce.number().int().min(100).default(2_000),
  /** WARREN_OPERATION_TIMEOUT_MS: an operation not converged by then fails with TIMEOUT. */
  operationTimeoutMs: z.coerce
    .number()
    .int()
    .min(1000)
    .default(15 * 60_000),
  /** WARREN_DEFAULT_PROFILE: image profile used when a create request names no image. */
  defaultProfile: z.string().min(1).default('standard'),
  /** WARREN_DEFAULT_VCPUS / _MEMORY_MIB / _DISK_MIB: resources of a tenant created without them. */
  defaultVcpus: amount('vcpus').default(RESOURCE_LIMITS.vcpus.default),
  defaultMemoryMiB: amount('memoryMiB').default(RESOURCE_LIMITS.memoryMiB.default),
  defaultDiskMiB: amount('diskMiB').default(RESOURCE_LIMITS.diskMiB.default),
  /** WARREN_QUOTA_VCPUS / _MEMORY_MIB / _DISK_MIB: a tenant's quota when the admin sets none. */
  quotaVcpus: amount('vcpus').default(4),
  quotaMemoryMiB: amount('memoryMiB').default(8192),
  quotaDiskMiB: amount('diskMiB').default(65_536),
  /** WARREN_MAX_VCPUS / _MEMORY_MIB / _DISK_MIB: platform maximum for any one tenant (and quota). */
  maxVcpus: amount('vcpus').default(16),
  maxMemoryMiB: amount('memoryMiB').default(65_536),
  maxDiskMiB: amount('diskMiB').default(1024 * 1024),
  /** WARREN_MAX_TENANTS: how many tenants the platform holds at most. */
  maxTenants: z.coerce.number().int().min(1).default(10_000),
  /** WARREN_SESSION_TTL_MS: how long a browser session (dashboard cookie) lasts; not extended by use. */
  sessionTtlMs: z.coerce
    .number()
    .int()
    .min(60_000)
    .max(30 * 24 * 3600_000)
    .default(12 * 3600_000),
  /** WARREN_DASHBOARD_BODY_LIMIT_BYTES: largest request body forwarded to a tenant's dashboard. */
  dashboardBodyLimitBytes: z.coerce
    .number()
    .int()
    .min(1024)
    .default(10 * 1024 * 1024),
  /** WARREN_DASHBOARD_TIMEOUT_MS: how long the dashboard proxy waits for the response headers. */
  dashboardTimeoutMs: z.coerce.number().int().min(100).default(30_000),
  /**
   * WARREN_IDLE_TIMEOUT: the platform default idle timeout: a tenant unused for this long
   * (no exec, file call, dashboard request or open tunnel, no guest-reported activity) is
   * suspended by its host, its memory saved to disk and released; any request wakes it. A
   * duration like `30m`, `2h`, `1d` (at least 10s), or `never`. A tenant's own setting
   * (`warren tenant update T --idle-timeout`) overrides it.
   */
  idleTimeout: z
    .string()
    .superRefine((s, ctx) => {
      const r = parseIdleTimeout(s);
      if ('error' in r) ctx.addIssue({ code: 'custom', message: r.error });
    })
    .default('30m'),
  /**
   * WARREN_WAKE_TIMEOUT_MS: how much longer than usual the control plane waits for the first
   * byte of an answer from a suspended tenant (its host wakes the VM first). Bounded, so a VM
   * that cannot wake fails the request rather than holding it.
   */
  wakeTimeoutMs: z.coerce
    .number()
    .int()
    .min(WAKE_TIMEOUT_MS.min)
    .max(WAKE_TIMEOUT_MS.max)
    .default(WAKE_TIMEOUT_MS.default),
  /** WARREN_DASHBOARD_WS_IDLE_MS: a proxied WebSocket without a byte either way for this long is closed. */
  dashboardWsIdleMs: z.coerce
    .number()
    .int()
    .min(1000)
    .default(10 * 60_000),
  /**
   * WARREN_DASHBOARD_RESPONSE_IDLE_MS: a dashboard response whose body stops moving for this
   * long (the VM stalls mid-answer, or the client stops reading) is cut off, so a hostile VM
   * cannot hold connections open forever. Event streams should send a heartbeat more often.
   */
  dashboardResponseIdleMs: z.coerce
    .number()
    .int()
    .min(1000)
    .default(5 * 60_000),
  /**
   * WARREN_DASHBOARD_DOMAIN: browsers open tenant `demo`'s dashboard at `demo.<this domain>`,
   * its own origin, so the browser keeps tenants' cookies, storage and scripts apart. Every
   * request whose Host is under it goes to a dashboard, never to the API. `dashboard.localhost`
   * works on one machine (browsers resolve `*.localhost` to loopback); in production a domain
   * of its own (wildcard DNS and certificate), not under the API's site.
   */
  dashboardDomain: z
    .string()
    .toLowerCase()
    .max(200)
    .regex(
      /^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$/,
      'must be a DNS name like dash.example.com',
    )
    .default('dashboard.localhost'),
  /**
   * WARREN_DASHBOARD_PUBLIC_URL: how browsers reach the dashboard domain (scheme, domain, port),
   * e.g. `https://dash.example.com` behind a TLS proxy; login links are built from it. When
   * unset: `http://<domain>:<the port the login request came in on>`.
   */
  dashboardPublicUrl: z
    .url({ protocol: /^https?$/, error: 'must be an http(s) URL like https://dash.example.com' })
    .refine((u) => new URL(u).pathname === '/' && !u.includes('?') && !u.includes('#'), 'must have no path')
    .optional(),
  /** WARREN_DASHBOARD_LOGIN_TTL_MS: how long a one-time dashboard login link (`POST /v1/sessions`) stays valid. */
  dashboardLoginTtlMs: z.coerce.number().int().min(5_000).max(3_600_000).default(60_000),
  /** WARREN_CONSOLE_SESSION_TTL_MS: how long a web console sign-in lasts (not extended by use). */
  consoleSessionTtlMs: z.coerce
    .number()
    .int()
    .min(60_000)
    .max(30 * 24 * 3_600_000)
    .default(12 * 3_600_000),
  /**
   * WARREN_CONSOLE_DIR: the built web console (`apps/console/dist`, which `npm start` and
   * `npm test` build) served at `/console/`; unset: the one next to this source tree.
   */
  consoleDir: z.string().startsWith('/').optional(),
  /** WARREN_TERMINAL_MAX_MS: the longest a terminal session (console or API) stays open. */
  terminalMaxMs: z.coerce
    .number()
    .int()
    .min(60_000)
    .default(8 * 3_600_000),
  /**
   * WARREN_REJOIN_TOKEN_TTL_MS: how long a re-join token (`warren host rejoin`) stays valid;
   * it is single-use and good for one host only.
   */
  rejoinTokenTtlMs: z.coerce
    .number()
    .int()
    .min(60_000)
    .default(24 * 3600_000),
  /**
   * WARREN_RATE_LIMIT_PER_SECOND: requests per second one credential (tenant key, admin token,
   * host or join token; a session counts as its key) may send sustained; 0 turns the limit off.
   */
  rateLimitPerSecond: z.coerce.number().min(0).max(1_000_000).default(50),
  /** WARREN_RATE_LIMIT_BURST: requests one credential may send at once before the rate applies. */
  rateLimitBurst: z.coerce.number().int().min(1).max(1_000_000).default(200),
  /** WARREN_TENANT_MAX_EXECS: exec streams one tenant may have open at once. */
  tenantMaxExecs: z.coerce.number().int().min(1).default(16),
  /**
   * WARREN_TENANT_MAX_DASHBOARD_STREAMS: dashboard requests in flight plus open WebSocket
   * tunnels one tenant may have at once.
   */
  tenantMaxDashboardStreams: z.coerce.number().int().min(1).default(100),
  /**
   * WARREN_SESSION_MAX_MS: the longest a safe-YOLO session (`POST /v1/tenants/{t}/sessions`)
   * may last; a request may ask for less, never more. An expired session is ended and its VM
   * reverted by the control plane's sweeper. (Not WARREN_SESSION_TTL_MS, which is the browser's.)
   */
  sessionMaxMs: z.coerce
    .number()
    .int()
    .min(1000)
    .max(7 * 24 * 3600_000)
    .default(3600_000),
  /** WARREN_AUDIT_RETENTION_DAYS: audit events older than this are deleted. */
  auditRetentionDays: z.coerce.number().int().min(1).default(90),
  /** WARREN_OPERATION_RETENTION_DAYS: finished operations older than this (since they ended) are deleted. */
  operationRetentionDays: z.coerce.number().int().min(1).default(7),
  /**
   * WARREN_MASTER_KEY_FILE: the platform master key (32 bytes) that wraps every tenant's backup
   * key; `<dataDir>/master.key` when unset, made (mode 0600) at first start. Without it no backup
   * can be read: keep a copy somewhere safe, apart from the backups.
   */
  masterKeyFile: z.string().startsWith('/').optional(),
  /** Where backups are, for verify and GC here (hosts write them); every host agent must name the same store (docs/operations.md, "Backups"). */
  ...objectStoreSettings,
  /**
   * WARREN_TENANT_MAX_BACKUPS: backups one tenant may hold (running, complete and failed alike);
   * one more is QUOTA_EXCEEDED. Bounds the catalog and what every GC pass reads; a policy's
   * keep rules keep a scheduled tenant well under it.
   */
  tenantMaxBackups: z.coerce.number().int().min(1).max(100_000).default(200),
  /**
   * WARREN_BACKUP_MIN_EVERY_MINUTES: the shortest schedule a tenant's backup policy may ask for
   * (`everyMinutes`); less is QUOTA_EXCEEDED. Each scheduled backup costs its host a freeze and a
   * read of what changed, and its prunes a GC pass over every tenant's manifests.
   */
  backupMinEveryMinutes: z.coerce.number().int().min(1).max(525_600).default(15),
  /**
   * WARREN_BACKUP_GC_MIN_INTERVAL_MS: GC after a prune waits until this long after the last GC
   * (a GC reads every complete backup's manifest: one tenant's prunes must not make it run
   * every scheduler pass); the pruned objects go at the next pass after that.
   */
  backupGcMinIntervalMs: z.coerce.number().int().min(0).default(3600_000),
  /** WARREN_BACKUP_POLL_MS: how often a running backup or restore job is asked for its progress. */
  backupPollMs: z.coerce.number().int().min(10).max(60_000).default(1_000),
  /**
   * WARREN_BACKUP_JOB_TIMEOUT_MS: a backup or restore job still running after this long is
   * failed with TIMEOUT (its partial objects are garbage for GC); bounds a host that hangs.
   */
  backupJobTimeoutMs: z.coerce
    .number()
    .int()
    .min(1000)
    .default(6 * 3600_000),
  /**
   * WARREN_BACKUP_SCHEDULE_MS: how often the backup scheduler looks for due backups (policies'
   * `everyMinutes`) and prunes by the policies' keep rules; 0 turns it off.
   */
  backupScheduleMs: z.coerce.number().int().min(0).default(60_000),
  /**
   * WARREN_BACKUP_GC_INTERVAL_MS: how often unreferenced chunks and manifests are deleted from
   * the object store (also after every prune that removed a backup); 0 turns the periodic run off.
   */
  backupGcIntervalMs: z.coerce
    .number()
    .int()
    .min(0)
    .default(24 * 3600_000),
  /**
   * WARREN_BACKUP_DRILL_INTERVAL_MS: how long a tenant with complete backups goes without a
   * restore drill (its newest backup restored into a scratch tenant, booted, files' digests
   * compared, the scratch tenant deleted); one drill runs at a time. 0 turns scheduled drills off.
   */
  backupDrillIntervalMs: z.coerce
    .number()
    .int()
    .min(0)
    .default(7 * 24 * 3600_000),
  /**
   * WARREN_EVENTS_BUFFER: events the control plane keeps in memory for `Last-Event-ID` replay on
   * `GET /v1/events` (a ring buffer; nothing is stored, a restart starts a new stream).
   */
  eventsBuffer: z.coerce.number().int().min(1).max(1_000_000).default(1000),
  /**
   * WARREN_EVENTS_CLIENT_QUEUE: events one `GET /v1/events` client may have waiting for its
   * socket; a client that falls that far behind is disconnected (it resumes with Last-Event-ID).
   */
  eventsClientQueue: z.coerce.number().int().min(1).max(100_000).default(1000),
  /** WARREN_EVENTS_KEEPALIVE_MS: how often an idle event stream gets a `: keepalive` comment. */
  eventsKeepaliveMs: z.coerce.number().int().min(100).max(300_000).default(15_000),
  /**
   * WARREN_METRICS_TOKEN: a token that may read `/metrics` and nothing else (for Prometheus),
   * at least 32 characters; the admin token may read it too. Unset: only the admin token.
   */
  metricsToken: z.string().min(32).max(512).optional(),
  /** WARREN_LOG_LEVEL: the least severe log level written (trace, debug, info, warn, error, fatal, silent). */
  logLevel: z.enum(LOG_LEVELS).default('info'),
  /** WARREN_LOG_FORMAT: `json` lines, `pretty` text, or `auto` (pretty when stderr is a terminal). */
  logFormat: z.enum(LOG_FORMATS).default('auto'),
});
export type ControlPlaneConfig = z.infer<typeof ControlPlaneConfig>;

export const CONFIG_ENV: Record<keyof ControlPlaneConfig, string> = {
  ...OBJECT_STORE_ENV,
  dataDir: 'WARREN_DATA_DIR',
  host: 'WARREN_API_HOST',
  port: 'WARREN_API_PORT',
  store: 'WARREN_STORE',
  sqlitePath: 'WARREN_SQLITE_PATH',
  bodyLimitBytes: 'WARREN_BODY_LIMIT_BYTES',
  uploadLimitBytes: 'WARREN_UPLOAD_LIMIT_BYTES',
  heartbeatTimeoutMs: 'WARREN_HEARTBEAT_TIMEOUT_MS',
  heartbeatIntervalMs: 'WARREN_HEARTBEAT_INTERVAL_MS',
  operationTimeoutMs: 'WARREN_OPERATION_TIMEOUT_MS',
  defaultProfile: 'WARREN_DEFAULT_PROFILE',
  defaultVcpus: 'WARREN_DEFAULT_VCPUS',
  defaultMemoryMiB: 'WARREN_DEFAULT_MEMORY_MIB',
  defaultDiskMiB: 'WARREN_DEFAULT_DISK_MIB',
  quotaVcpus: 'WARREN_QUOTA_VCPUS',
  quotaMemoryMiB: 'WARREN_QUOTA_MEMORY_MIB',
  quotaDiskMiB: 'WARREN_QUOTA_DISK_MIB',
  maxVcpus: 'WARREN_MAX_VCPUS',
  maxMemoryMiB: 'WARREN_MAX_MEMORY_MIB',
  maxDiskMiB: 'WARREN_MAX_DISK_MIB',
  maxTenants: 'WARREN_MAX_TENANTS',
  sessionTtlMs: 'WARREN_SESSION_TTL_MS',
  dashboardBodyLimitBytes: 'WARREN_DASHBOARD_BODY_LIMIT_BYTES',
  dashboardTimeoutMs: 'WARREN_DASHBOARD_TIMEOUT_MS',
  dashboardWsIdleMs: 'WARREN_DASHBOARD_WS_IDLE_MS',
  idleTimeout: 'WARREN_IDLE_TIMEOUT',
  wakeTimeoutMs: 'WARREN_WAKE_TIMEOUT_MS',
  dashboardResponseIdleMs: 'WARREN_DASHBOARD_RESPONSE_IDLE_MS',
  dashboardDomain: 'WARREN_DASHBOARD_DOMAIN',
  dashboardPublicUrl: 'WARREN_DASHBOARD_PUBLIC_URL',
  dashboardLoginTtlMs: 'WARREN_DASHBOARD_LOGIN_TTL_MS',
  consoleSessionTtlMs: 'WARREN_CONSOLE_SESSION_TTL_MS',
  consoleDir: 'WARREN_CONSOLE_DIR',
  terminalMaxMs: 'WARREN_TERMINAL_MAX_MS',
  rejoinTokenTtlMs: 'WARREN_REJOIN_TOKEN_TTL_MS',
  rateLimitPerSecond: 'WARREN_RATE_LIMIT_PER_SECOND',
  rateLimitBurst: 'WARREN_RATE_LIMIT_BURST',
  tenantMaxExecs: 'WARREN_TENANT_MAX_EXECS',
  tenantMaxDashboardStreams: 'WARREN_TENANT_MAX_DASHBOARD_STREAMS',
  sessionMaxMs: 'WARREN_SESSION_MAX_MS',
  auditRetentionDays: 'WARREN_AUDIT_RETENTION_DAYS',
  operationRetentionDays: 'WARREN_OPERATION_RETENTION_DAYS',
  masterKeyFile: 'WARREN_MASTER_KEY_FILE',
  s3Endpoint: 'WARREN_S3_ENDPOINT',
  s3Region: 'WARREN_S3_REGION',
  s3Bucket: 'WARREN_S3_BUCKET',
  s3AccessKeyId: 'WARREN_S3_ACCESS_KEY_ID',
  s3SecretAccessKey: 'WARREN_S3_SECRET_ACCESS_KEY',
  s3ForcePathStyle: 'WARREN_S3_FORCE_PATH_STYLE',
  tenantMaxBackups: 'WARREN_TENANT_MAX_BACKUPS',
  backupMinEveryMinutes: 'WARREN_BACKUP_MIN_EVERY_MINUTES',
  backupGcMinIntervalMs: 'WARREN_BACKUP_GC_MIN_INTERVAL_MS',
  backupPollMs: 'WARREN_BACKUP_POLL_MS',
  backupJobTimeoutMs: 'WARREN_BACKUP_JOB_TIMEOUT_MS',
  backupScheduleMs: 'WARREN_BACKUP_SCHEDULE_MS',
  backupGcIntervalMs: 'WARREN_BACKUP_GC_INTERVAL_MS',
  backupDrillIntervalMs: 'WARREN_BACKUP_DRILL_INTERVAL_MS',
  eventsBuffer: 'WARREN_EVENTS_BUFFER',
  eventsClientQueue: 'WARREN_EVENTS_CLIENT_QUEUE',
  eventsKeepaliveMs: 'WARREN_EVENTS_KEEPALIVE_MS',
  metricsToken: 'WARREN_METRICS_TOKEN',
  logLevel: 'WARREN_LOG_LEVEL',
  logFormat: 'WARREN_LOG_FORMAT',
};

export function loadConfig(
  env: NodeJS.ProcessEnv = process.env,
  overrides: Partial<ControlPlaneConfig> = {},
): ControlPlaneConfig {
  const raw: Record<string, unknown> = {};
  for (const [key, name] of Object.entries(CONFIG_ENV)) {
    if (env[name] !== undefined && env[name] !== '') raw[key] = env[name];
  }
  const r = ControlPlaneConfig.safeParse({ ...raw, ...overrides });
  if (r.success) {
    // Checked here so a bad object store setting stops the control plane at start, naming its variable.
    const [bad] = objectStoreSettingIssues(r.data);
    if (bad)
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `${CONFIG_ENV[bad.setting]}: ${bad.message} (see docs/configuration.md)`,
      );
    const publicUrl = r.data.dashboardPublicUrl;
    if (publicUrl !== undefined && new URL(publicUrl).hostname !== r.data.dashboardDomain) {
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `WARREN_DASHBOARD_PUBLIC_URL: its host must be WARREN_DASHBOARD_DOMAIN (${r.data.dashboardDomain}) (see docs/configuration.md)`,
      );
    }
    return r.data;
  }
  const issue = r.error.issues[0];
  const key = issue?.path[0] as keyof ControlPlaneConfig | undefined;
  const name = key && CONFIG_ENV[key] ? CONFIG_ENV[key] : 'configuration';
  throw new WarrenError(
    'INVALID_ARGUMENT',
    `${name}: ${issue?.message ?? 'invalid'} (see docs/configuration.md)`,
  );
}

/** The store these settings name: the same variables and default directory as the host agent's, so one machine's daemons share it. */
export { objectStoreConfigOf } from '@warren/object-store/config';

/** The platform default idle timeout in ms (WARREN_IDLE_TIMEOUT); null: never. */
export function defaultIdleTimeoutMs(config: Pick<ControlPlaneConfig, 'idleTimeout'>): number | null {
  const r = parseIdleTimeout(config.idleTimeout);
  return 'ms' in r ? r.ms : null;
}

/** The platform master key file (WARREN_MASTER_KEY_FILE). */
export function masterKeyFileOf(config: ControlPlaneConfig): string {
  return config.masterKeyFile ?? `${config.dataDir}/master.key`;
}

/** Where the control plane keeps its files: database, token files, api.json. */
export function stateDirOf(config: ControlPlaneConfig): string {
  return `${config.dataDir}/control-plane`;
}
