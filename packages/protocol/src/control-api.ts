/**
 * The control plane's public API (`/v1`): request and response shapes shared by the server,
 * the SDK and the CLI. A zod schema and its inferred type share one name. The server builds
 * its OpenAPI document from these same schemas, so the document cannot drift from the code.
 */
import { z } from 'zod';
import { ExecRequest } from './guest-api.ts';
import { PROFILES } from './local-api.ts';
import { DesiredConfig, DesiredSkill, MAX_TENANT_SKILLS, SkillRef, TenantConfigValues } from './skills.ts';

/**
 * DNS-label names (RFC 1123): lowercase ASCII letters, digits and inner dashes, at most 63
 * bytes. Anything else (unicode look-alikes, dots, slashes, `..`, upper case) is refused, so a
 * name is safe in a URL, a hostname and a log line.
 */
export const ResourceName = z
  .string()
  .min(1, 'a name needs at least one character')
  .max(63, 'a name is at most 63 characters')
  .regex(
    /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/,
    'a name is lowercase a-z, 0-9 and inner dashes (a DNS label), like "team-42"',
  );

export const TenantId = z.string().regex(/^ten_[0-9a-f]{16}$/, 'a tenant id looks like ten_0123456789abcdef');
export const HostId = z.string().regex(/^host_[0-9a-f]{16}$/, 'a host id looks like host_0123456789abcdef');
export const KeyId = z.string().regex(/^key_[0-9a-f]{16}$/, 'a key id looks like key_0123456789abcdef');
export const OperationId = z
  .string()
  .regex(/^op_[0-9a-f]{16}$/, 'an operation id looks like op_0123456789abcdef');
/** A tenant is addressed by id or by name in every path: `/v1/tenants/{tenant}`. */
export const TenantRef = z.union([TenantId, ResourceName]);

/**
 * The one definition of how big a tenant's VM may be, and what it gets when its creator names
 * no size. The control plane validates requests and its settings (defaults, quotas, maximums)
 * against these bounds, the host agent its VM create requests, the CLI its flags: a size one of
 * them accepts, the others accept too.
 */
export const RESOURCE_LIMITS = {
  vcpus: { min: 1, max: 1024, default: 1 },
  memoryMiB: { min: 128, max: 4 * 1024 * 1024, default: 1024 },
  diskMiB: { min: 16, max: 64 * 1024 * 1024, default: 4096 },
} as const;
export type ResourceKind = keyof typeof RESOURCE_LIMITS;

/** An amount of one resource (vCPUs, MiB), within its bounds. */
export function resourceAmount(resource: ResourceKind) {
  const { min, max } = RESOURCE_LIMITS[resource];
  return z.number().int().min(min).max(max);
}

export const Resources = z.strictObject({
  vcpus: resourceAmount('vcpus'),
  memoryMiB: resourceAmount('memoryMiB'),
  /** Size of the persistent data volume mounted at /workspace. */
  diskMiB: resourceAmount('diskMiB'),
});
export type Resources = z.infer<typeof Resources>;

/** What the control plane wants a tenant's VM to be; host agents converge to it. */
export const DesiredState = z.enum(['running', 'stopped', 'absent']);
export type DesiredState = z.infer<typeof DesiredState>;

/**
 * What a tenant's VM is, as last reported by its host agent. `pending` until the agent first
 * reports it; `deleting` while desired state is `absent`. `suspended`: idle, its memory saved
 * to disk and its VMM ended (desired state stays `running`; any request wakes it).
 * `unhealthy`: running, but its guest agent stopped answering (the host restarts it after a
 * grace period). `lost`: its host was removed by an admin; only a restore brings it back.
 */
export const TenantState = z.enum([
  'pending',
  'provisioning',
  'starting',
  'running',
  'stopping',
  'stopped',
  'crashed',
  'failed',
  'deleting',
  'suspended',
  'unhealthy',
  'lost',
]);
export type TenantState = z.infer<typeof TenantState>;

export const ErrorSummary = z.object({ code: z.string().max(64), message: z.string().max(4096) });
export type ErrorSummary = z.infer<typeof ErrorSummary>;

/** An IPv4 CIDR like `203.0.113.0/24` (a bare address means /32). */
export const Ipv4Cidr = z
  .string()
  .max(18)
  .regex(
    /^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\/(3[0-2]|[12]?\d))?$/,
    'an IPv4 address or CIDR like 203.0.113.0/24',
  );

/** One allowlist entry: a destination network and, optionally, ports (TCP and UDP). */
export const EgressRule = z.strictObject({
  cidr: Ipv4Cidr,
  ports: z.array(z.number().int().min(1).max(65535)).max(64).optional(),
});
export type EgressRule = z.infer<typeof EgressRule>;

/**
 * What a tenant's VM may reach. `internet`: any public address; `none`: nothing (DNS
 * included); `allowlist`: only the listed public networks and ports. Private, shared,
 * link-local, loopback and multicast destinations, other tenants and the host itself are
 * always blocked, whatever the mode.
 */
export const NetworkPolicy = z.strictObject({
  egress: z.enum(['internet', 'none', 'allowlist']).default('internet'),
  allowlist: z.array(EgressRule).max(256).default([]),
  /** Egress bandwidth limit in Mbit/s; none when null. */
  bandwidthMbit: z.number().int().min(1).max(100_000).nullable().default(null),
});
export type NetworkPolicy = z.infer<typeof NetworkPolicy>;

/** The VM port the dashboard proxy forwards to (OpenClaw's Control UI is 18789). */
export const DashboardPort = z.number().int().min(1).max(65535);
export const DEFAULT_DASHBOARD_PORT = 8080;

/**
 * How long a tenant may sit unused before its VM is suspended: a whole number of seconds,
 * minutes, hours or days (`20s`, `15m`, `2h`, `1d`), or `never`. At least
 * `IDLE_TIMEOUT_MIN_MS` (a shorter one would suspend between two commands of one script) and at
 * most `IDLE_TIMEOUT_MAX_MS`. The one parser of the form: the API, the control plane's
 * WARREN_IDLE_TIMEOUT and the CLI all use it.
 */
export const IDLE_TIMEOUT_MIN_MS = 10_000;
export const IDLE_TIMEOUT_MAX_MS = 30 * 24 * 3600_000;
const DURATION_UNITS = { s: 1000, m: 60_000, h: 3600_000, d: 24 * 3600_000 } as const;

/**
 * WARREN_WAKE_TIMEOUT_MS, read by both daemons (`warren up` gives them one environment): how
 * long a request to a suspended or starting VM waits for it on the host, and how much longer
 * than usual the control plane waits for such a request's first byte.
 */
export const WAKE_TIMEOUT_MS = { default: 60_000, min: 1_000, max: 600_000 } as const;

/** `15m` to 900000, `never` to null; a message saying what is accepted otherwise. */
export function parseIdleTimeout(text: string): { ms: number | null } | { error: string } {
  const form = 'give a duration like 20s, 15m, 2h or 1d, or never';
  if (text === 'never') return { ms: null };
  const m = /^([0-9]{1,9})([smhd])$/.exec(text);
  if (!m) return { error: `"${text.slice(0, 40)}" is not an idle timeout: ${form}` };
  const ms = Number(m[1]) * DURATION_UNITS[m[2] as keyof typeof DURATION_UNITS];
  if (ms < IDLE_TIMEOUT_MIN_MS)
    return {
      error: `idle timeout ${text} is shorter than the minimum of ${formatIdleTimeout(IDLE_TIMEOUT_MIN_MS)}`,
    };
  if (ms > IDLE_TIMEOUT_MAX_MS)
    return {
      error: `idle timeout ${text} is longer than the maximum of ${formatIdleTimeout(IDLE_TIMEOUT_MAX_MS)}; use never to turn suspension off`,
    };
  return { ms };
}

/** 900000 to `15m` (the largest unit that divides it), null to `never`. */
export function formatIdleTimeout(ms: number | null): string {
  if (ms === null) return 'never';
  for (const [unit, size] of Object.entries(DURATION_UNITS).reverse()) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${Math.round(ms / 1000)}s`;
}

/** An idle timeout as the API takes it (`15m`, `never`); it stays a string on the wire. */
export const IdleTimeout = z
  .string()
  .max(20)
  .superRefine((s, ctx) => {
    const r = parseIdleTimeout(s);
    if ('error' in r) ctx.addIssue({ code: 'custom', message: r.error });
  });

/** Failed attempts at a tenant's VM step (start, create), as its host last reported them. */
export const StartAttempts = z.object({
  count: z.number().int().min(0),
  /** When the host tries again; null: it gave up (`warren tenant start` tries again). */
  nextAttemptAt: z.string().nullable(),
});
export type StartAttempts = z.infer<typeof StartAttempts>;

export const Tenant = z.object({
  id: TenantId,
  name: ResourceName,
  state: TenantState,
  desiredState: DesiredState,
  /** Full image id (sha256:...) the tenant is pinned to. */
  imageId: z.string(),
  vcpus: z.number().int(),
  memoryMiB: z.number().int(),
  diskMiB: z.number().int(),
  quota: Resources,
  network: NetworkPolicy,
  dashboardPort: DashboardPort,
  hostId: HostId.nullable(),
  /** False when the tenant's host stopped heartbeating: `state` is then the last known one. */
  hostHealthy: z.boolean(),
  lastError: ErrorSummary.nullable(),
  /** Failed start attempts its host reported; null when it reported none. */
  attempts: StartAttempts.nullable(),
  /**
   * `setting`: the tenant's own idle timeout (`15m`, `never`), null when it follows the platform
   * default (WARREN_IDLE_TIMEOUT); `effective`: the one that applies.
   */
  idleTimeout: z.object({ setting: z.string().nullable(), effective: z.string() }),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type Tenant = z.infer<typeof Tenant>;

export const CreateTenantRequest = z.strictObject({
  name: ResourceName,
  /** An image id or unique prefix; the newest image of the default profile when absent. */
  image: z.string().min(1).max(80).optional(),
  /** The newest image of this profile (`openclaw`, …) instead of the default profile's; not with `image`. */
  imageProfile: z.enum(PROFILES).optional(),
  vcpus: resourceAmount('vcpus').optional(),
  memoryMiB: resourceAmount('memoryMiB').optional(),
  diskMiB: resourceAmount('diskMiB').optional(),
  /** The most this tenant may ever use (admin only); platform defaults when absent. */
  quota: Resources.partial().optional(),
  network: NetworkPolicy.optional(),
  dashboardPort: DashboardPort.optional(),
  /** Suspend the VM after this long unused (`20s`, `15m`, `2h`, `never`); the platform default when absent. */
  idleTimeout: IdleTimeout.optional(),
  /** Shared skill packages (`name@version` or `name@channel`), attached read-only to the VM. */
  skills: z.array(SkillRef).max(MAX_TENANT_SKILLS).optional(),
  /** The tenant's own configuration values per file, deep-merged over the platform templates. */
  config: TenantConfigValues.optional(),
});

/**
 * Changes of a tenant's settings; network changes apply to a running VM at once. A tenant key
 * may change only `idleTimeout` (of its own tenant); the rest is admin-only. `idleTimeout: null`
 * goes back to the platform default.
 */
export const UpdateTenantRequest = z.strictObject({
  network: NetworkPolicy.optional(),
  dashboardPort: DashboardPort.optional(),
  idleTimeout: IdleTimeout.nullable().optional(),
  /** Replaces the tenant's skill references (admin only); the VM gets them at its next start. */
  skills: z.array(SkillRef).max(MAX_TENANT_SKILLS).optional(),
  /** Sets (or with null removes) the tenant's values of the named files (admin only); applied at once. */
  config: TenantConfigValues.optional(),
});
export type UpdateTenantRequest = z.input<typeof UpdateTenantRequest>;
export type CreateTenantRequest = z.input<typeof CreateTenantRequest>;

export const ListTenantsQuery = z.strictObject({
  state: TenantState.optional(),
  host: z.union([HostId, ResourceName]).optional(),
});
export type ListTenantsQuery = z.infer<typeof ListTenantsQuery>;

/**
 * `create`, `start`, `stop`, `delete` end when the tenant's host reports the new desired state;
 * `restore` (a backup put back into the tenant's volumes) ends when its host's restore job does.
 */
export const OperationKind = z.enum(['create', 'start', 'stop', 'delete', 'restore']);
export const OperationStatus = z.enum(['running', 'succeeded', 'failed']);
/** How far long work (a restore) has come, in bytes of the volumes it writes. */
export const OperationProgress = z.object({
  bytesTotal: z.number().int().min(0),
  bytesDone: z.number().int().min(0),
});
export type OperationProgress = z.infer<typeof OperationProgress>;
export const Operation = z.object({
  id: OperationId,
  kind: OperationKind,
  tenantId: TenantId,
  tenantName: ResourceName,
  status: OperationStatus,
  error: ErrorSummary.nullable(),
  /** Only for kinds that report it (restore); null until the first report. */
  progress: OperationProgress.nullable().optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type Operation = z.infer<typeof Operation>;

/** Every lifecycle mutation answers 202 with the tenant as it is now and the operation to watch. */
export const TenantOperationResponse = z.object({ tenant: Tenant, operation: Operation });
export type TenantOperationResponse = z.infer<typeof TenantOperationResponse>;

/** Exec through the API: the guest's ExecRequest, with stdin as base64 in the body. */
export const TenantExecRequest = ExecRequest.omit({ stdin: true }).extend({
  stdin: z
    .base64()
    .max(8 * 1024 * 1024)
    .optional(),
});
export type TenantExecRequest = z.input<typeof TenantExecRequest>;

/**
 * `GET /v1/tenants/{t}/terminal` (a WebSocket): the terminal's first size. Binary messages carry
 * the terminal's bytes both ways; text messages are JSON: `{"resize": {cols, rows}}` from the
 * client, `{"exit": {}}` or `{"error": {code, message}}` from the platform before it closes.
 */
export const TerminalQuery = z.strictObject({
  cols: z.coerce.number().int().min(1).max(1000).default(80),
  rows: z.coerce.number().int().min(1).max(1000).default(24),
});
export const TerminalResize = z.strictObject({
  resize: z.strictObject({
    cols: z.number().int().min(1).max(1000),
    rows: z.number().int().min(1).max(1000),
  }),
});

/**
 * Exec answers `application/x-ndjson`, one object per line: `{"stdout": base64}`,
 * `{"stderr": base64}`, and last either `{"exit": ExecExit}` or `{"error": {...}}`.
 */
export const EXEC_CONTENT_TYPE = 'application/x-ndjson';

export const FileQuery = z.strictObject({
  path: z
    .string()
    .min(1)
    .max(4096)
    .refine((s) => s.startsWith('/'), 'must be an absolute path')
    .refine((s) => !s.includes('\0'), 'must not contain NUL')
    .refine((s) => !s.split('/').includes('..'), 'must not contain `..` segments'),
});

export const FileWritten = z.object({ path: z.string(), bytes: z.number().int() });

/** Resources in use: like Resources, but an empty host has zero of each. */
export const Allocation = z.object({
  vcpus: z.number().int().min(0),
  memoryMiB: z.number().int().min(0),
  diskMiB: z.number().int().min(0),
});

export const HostHealth = z.enum(['healthy', 'unhealthy']);
/**
 * How a host limits its VMs' CPU, memory and processes: a cgroup version, or `off` when its
 * operator turned limits off (WARREN_CGROUPS=off). A host agent never runs without them silently.
 */
export const CgroupState = z.enum(['v1', 'v2', 'off']);
export type CgroupState = z.infer<typeof CgroupState>;
/**
 * The VMM driver a host runs its VMs with (its WARREN_VMM). A name rather than an enum, so a
 * new driver in the host agent needs no protocol change.
 */
export const VmmName = z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'a VMM driver name');
/** A tenant VM its host keeps stopped because no control plane lists it (an orphan). */
export const QuarantinedVm = z.strictObject({
  vmId: z.string().max(64),
  tenantId: TenantId,
  imageId: z.string().max(80),
  vcpus: z.number().int().min(0),
  memoryMiB: z.number().int().min(0),
  diskMiB: z.number().int().min(0),
  quarantinedAt: z.string().max(40),
  /** When the host removes it, unless an admin adopts it first. */
  removeAfter: z.string().max(40),
});
export type QuarantinedVm = z.infer<typeof QuarantinedVm>;

export const Host = z.object({
  id: HostId,
  name: ResourceName,
  /** Where the control plane reaches the host agent's API (http://ip:port). */
  address: z.string(),
  capacity: Resources,
  /** Booked by every tenant placed on the host, suspended ones included. */
  allocated: Allocation,
  /**
   * The part of `allocated` that suspended tenants hold: their memory and vCPUs are free for
   * placement (their disks stay booked), so free memory is capacity - allocated + suspended.
   */
  suspended: z.object({
    tenants: z.number().int().min(0),
    vcpus: z.number().int().min(0),
    memoryMiB: z.number().int().min(0),
  }),
  /** VMs the host keeps stopped because no tenant names them (orphans), until `removeAfter`. */
  quarantined: z.array(QuarantinedVm),
  health: HostHealth,
  draining: z.boolean(),
  agentVersion: z.string(),
  /** From the host's last heartbeat; `unknown` until the first one this control plane saw. */
  cgroups: z.union([CgroupState, z.literal('unknown')]),
  /** The host's VMM driver, from its last heartbeat; `unknown` until the first one this control plane saw. */
  vmm: z.string(),
  images: z.array(z.string()),
  tenants: z.number().int(),
  lastHeartbeatAt: z.string().nullable(),
  createdAt: z.string(),
});
export type Host = z.infer<typeof Host>;

export const DrainRequest = z.strictObject({ draining: z.boolean().default(true) });

/** `DELETE /v1/hosts/{host}`: `force` removes a host that still heartbeats. */
export const RemoveHostQuery = z.strictObject({ force: z.enum(['true', 'false']).optional() });

/** `POST /v1/hosts/{host}/quarantine/{vmId}/adopt`: the name the adopted tenant gets. */
export const AdoptVmRequest = z.strictObject({ name: ResourceName });
export type AdoptVmRequest = z.input<typeof AdoptVmRequest>;

export const ApiKey = z.object({
  id: KeyId,
  name: z.string(),
  tenantId: TenantId,
  tenantName: ResourceName,
  /** First characters of the token, to recognise it; the token itself is shown only once. */
  prefix: z.string(),
  createdAt: z.string(),
  lastUsedAt: z.string().nullable(),
});
export type ApiKey = z.infer<typeof ApiKey>;

/** The label an operator gives an API key or a join token, shown in listings. */
const CredentialLabel = z
  .string()
  .min(1)
  .max(100)
  .regex(/^[\x20-\x7e]+$/, 'printable ASCII only');

export const CreateKeyRequest = z.strictObject({
  tenant: TenantRef,
  name: CredentialLabel.optional(),
});
export const CreatedKey = z.object({ key: ApiKey, token: z.string() });
export type CreatedKey = z.infer<typeof CreatedKey>;

/**
 * A token host agents join with. `hostId`: a re-join token, good only for re-joining that
 * host; `singleUse`: the first successful join consumes it; `bootstrap`: the token in the
 * control plane's `join-token` file, which a restart replaces if the file is lost.
 */
export const JoinToken = z.object({
  id: KeyId,
  name: z.string(),
  prefix: z.string(),
  singleUse: z.boolean(),
  hostId: HostId.nullable(),
  bootstrap: z.boolean(),
  expiresAt: z.string().nullable(),
  createdAt: z.string(),
  lastUsedAt: z.string().nullable(),
});
export type JoinToken = z.infer<typeof JoinToken>;

export const CreateJoinTokenRequest = z.strictObject({
  name: CredentialLabel.optional(),
  singleUse: z.boolean().default(false),
});
export type CreateJoinTokenRequest = z.input<typeof CreateJoinTokenRequest>;
export const CreatedJoinToken = z.object({ joinToken: JoinToken, token: z.string() });
export type CreatedJoinToken = z.infer<typeof CreatedJoinToken>;

export const AuditEvent = z.object({
  id: z.number().int(),
  at: z.string(),
  /** `admin`, `key:<id>` (a tenant key), `host:<id>` or `join-token:<id>`. */
  actor: z.string(),
  /** e.g. `tenant.create`, `key.revoke`, `host.drain`. */
  action: z.string(),
  /** The resource acted on, as the request named it. */
  target: z.string(),
  tenantId: TenantId.nullable(),
  /** `ok` or the error code. */
  result: z.string(),
  status: z.number().int(),
  requestId: z.string(),
});
export type AuditEvent = z.infer<typeof AuditEvent>;

/** `GET /v1/operations`: newest first; `status=running` lists what is in progress. */
export const OperationsQuery = z.strictObject({
  tenant: TenantRef.optional(),
  status: OperationStatus.optional(),
  limit: z.coerce.number().int().min(1).max(500).default(50),
});

export const AuditQuery = z.strictObject({
  tenant: TenantRef.optional(),
  action: z
    .string()
    .regex(/^[a-z.]{1,40}$/)
    .optional(),
  /** Only events with a smaller id (paging backwards from the newest). */
  before: z.coerce.number().int().positive().optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

/* ---------------------------------------------------------------------------------------
 * The dashboard proxy: `/t/{tenant}/dashboard/...` on the control plane forwards to the
 * tenant's host agent, which forwards to the dashboard port of the tenant's VM.
 * ------------------------------------------------------------------------------------- */

/** The path prefix of a tenant's dashboard; the app behind it sees it as `X-Forwarded-Prefix`. */
export function dashboardPrefix(tenant: string): string {
  return `/t/${tenant}/dashboard`;
}

/**
 * The browser session cookie of a dashboard origin (`<tenant>.<WARREN_DASHBOARD_DOMAIN>`). It
 * holds a random session id (the store keeps its hash) and is HttpOnly, so no script reads it.
 * The `__Host-` prefix makes browsers refuse it with a `Domain` attribute or a `Path` other
 * than `/`: another tenant's page on a sibling host cannot plant one, and the page itself
 * cannot add one on a deeper path. Never forwarded to a VM, never accepted by the /v1 API or
 * the path form `/t/<tenant>/dashboard/`.
 */
export const SESSION_COOKIE = '__Host-warren_session';

/** `POST /console/api/session`: exchange an admin token or a tenant key for a console session. */
export const ConsoleSignInRequest = z.strictObject({ token: z.string().min(1).max(200) });

/** The console's view of its session; `csrfToken` goes in `X-Warren-CSRF` on every console API call. */
export const ConsoleSession = z.object({
  kind: z.enum(['admin', 'tenant']),
  tenantId: TenantId.nullable(),
  tenantName: ResourceName.nullable(),
  csrfToken: z.string(),
  expiresAt: z.string(),
});
export type ConsoleSession = z.infer<typeof ConsoleSession>;

/**
 * The web console's session cookie (on the API's own host, path `/console/`). Read by the
 * console's routes only (`/console/api/…`), never by `/v1`; never forwarded to a VM.
 */
export const CONSOLE_COOKIE = 'warren_console';

/**
 * Whether a cookie name looks like the platform's session cookie: `warren_session` under any
 * case, spacing or `__Host-`/`__Secure-` prefix. Such cookies are never forwarded to a VM, and
 * a VM may not set them.
 */
export function isPlatformCookieName(name: string): boolean {
  return (
    name
      .trim()
      .toLowerCase()
      .replace(/^__(host|secure)-/, '')
      .match(/^warren_(session|console)$/) !== null
  );
}

/** Paths on a dashboard origin that the platform answers itself; the app never sees them. */
export const DASHBOARD_LOGIN_PATH = '/.warren/login';
export const DASHBOARD_LOGOUT_PATH = '/.warren/logout';

/**
 * `POST /v1/sessions`: a one-time login link for one tenant's dashboard origin. A tenant key's
 * link is for its own tenant; the admin names the tenant (a session opens one tenant only).
 */
export const CreateSessionRequest = z.strictObject({ tenant: TenantRef.optional() });
export type CreateSessionRequest = z.input<typeof CreateSessionRequest>;

export const Session = z.object({
  tenantId: TenantId,
  tenantName: ResourceName,
  /** The tenant's dashboard origin, `<scheme>://<tenant>.<WARREN_DASHBOARD_DOMAIN>[:port]/`. */
  dashboardUrl: z.string(),
  /**
   * Open this in the browser once, before `loginExpiresAt`: it sets the dashboard origin's
   * session cookie and goes on to `/`. The code in it works once.
   */
  loginUrl: z.string(),
  loginExpiresAt: z.string(),
});
export type Session = z.infer<typeof Session>;

export const HealthResponse = z.object({ ok: z.literal(true), version: z.string() });

/* ---------------------------------------------------------------------------------------
 * Host agent <-> control plane. The agent calls the control plane (join, then heartbeats);
 * the control plane calls the agent's API only for exec, files and proxying.
 * ------------------------------------------------------------------------------------- */

export const ImageSummary = z.object({
  id: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  profile: z.string().max(40),
  createdAt: z.string(),
});

export const JoinRequest = z.strictObject({
  name: ResourceName,
  /** Base URL of the agent's API as the control plane should reach it. */
  address: z.url({ protocol: /^https?$/ }),
  /** Secret the control plane must present to the agent's API (Bearer). */
  agentToken: z.string().min(32).max(200),
  agentVersion: z.string().max(40),
  capacity: Resources,
  /**
   * The host token this agent holds from an earlier join under `name`, if any: the proof that
   * lets it join again under a name that exists (otherwise HOST_EXISTS).
   */
  hostToken: z.string().max(200).optional(),
});
export type JoinRequest = z.infer<typeof JoinRequest>;
/** `token` authenticates the agent's heartbeats; a re-join under the same name rotates it. */
export const JoinResponse = z.object({ hostId: HostId, token: z.string(), heartbeatIntervalMs: z.number() });
export type JoinResponse = z.infer<typeof JoinResponse>;

/** One tenant VM as the agent sees it. `generation` is the desired generation it last acted on. */
export const ReportedVm = z.strictObject({
  tenantId: TenantId,
  state: TenantState.exclude(['pending', 'deleting', 'lost']),
  generation: z.number().int().min(0),
  error: ErrorSummary.nullable(),
  /**
   * Failed attempts at the current generation's step (start, create) and when the next one
   * is due; `nextAttemptAt` null means the agent gave up (a new generation, such as
   * `warren tenant start`, tries again). Optional: older agents do not send it.
   */
  attempts: z.object({ count: z.number().int().min(0), nextAttemptAt: z.string().nullable() }).optional(),
});
export type ReportedVm = z.infer<typeof ReportedVm>;

export const HeartbeatRequest = z.strictObject({
  address: z.url({ protocol: /^https?$/ }).optional(),
  agentVersion: z.string().max(40),
  capacity: Resources,
  health: z.enum(['ok', 'degraded']),
  /** Optional: agents older than this field do not send it. */
  cgroups: CgroupState.optional(),
  /** Optional: agents older than this field do not send it. */
  vmm: VmmName.optional(),
  images: z.array(ImageSummary).max(1000),
  /** Every tenant VM on the host, including those being created or deleted. */
  vms: z.array(ReportedVm).max(10_000),
  /**
   * Tenant VMs the control plane's desired list did not name: stopped and kept (never
   * destroyed) until `removeAfter`. Not in `vms`. Optional: older agents do not send it.
   */
  quarantined: z.array(QuarantinedVm).max(10_000).optional(),
});
export type HeartbeatRequest = z.infer<typeof HeartbeatRequest>;

/** The whole desired state of one tenant on this host. */
export const DesiredTenant = z.object({
  tenantId: TenantId,
  /** The VM id on the host: `ten-` and the tenant id's hex. */
  vmId: z.string(),
  name: ResourceName,
  desiredState: DesiredState,
  imageId: z.string(),
  vcpus: z.number().int(),
  memoryMiB: z.number().int(),
  diskMiB: z.number().int(),
  network: NetworkPolicy,
  dashboardPort: DashboardPort,
  /** Grows with every change of desired state; the agent reports the one it acted on. */
  generation: z.number().int(),
  /**
   * Suspend the VM after this long without use (the tenant's own setting, else the platform
   * default); null: never. Absent from older control planes: never.
   */
  idleTimeoutMs: z.number().int().positive().nullable().default(null),
  /**
   * Grows with every change of the tenant's secrets (set, remove); 0: it never had any. The
   * values are not in this list: the agent fetches them (`POST /v1/agent/secrets`) when this
   * differs from what it holds. Absent from older control planes: 0.
   */
  secretsGeneration: z.number().int().min(0).default(0),
  /** Skill packages to attach read-only, resolved to versions and digests. Absent from older control planes: none. */
  skills: z.array(DesiredSkill).max(MAX_TENANT_SKILLS).default([]),
  /** Rendered configuration files for /run/warren/config; null: none. */
  config: DesiredConfig.nullable().default(null),
});
export type DesiredTenant = z.infer<typeof DesiredTenant>;

/**
 * The complete list of tenants assigned to the host. A tenant VM on the host that is not in
 * it is an orphan: the agent stops it and keeps it quarantined (HeartbeatRequest.quarantined)
 * for a while before it removes it, since the list may come from a restored or fresh database.
 */
export const HeartbeatResponse = z.object({
  tenants: z.array(DesiredTenant),
  heartbeatIntervalMs: z.number().int(),
});
export type HeartbeatResponse = z.infer<typeof HeartbeatResponse>;

/**
 * The host agent's proxy route for one port of a tenant VM. The control plane names only the
 * VM and the port; the agent alone decides the address (the VM's own guest IP), so the route
 * cannot be turned into an open proxy.
 */
export function vmProxyPath(vmId: string, port: number, path: string): string {
  return `/v1/vms/${vmId}/proxy/${port}${path}`;
}

/**
 * Set by the host agent on every response it relays from a VM, so the control plane can tell
 * the VM's own answers (passed through as they are, whatever their status) from the agent's
 * errors. The agent removes it from what the VM sends, so a VM cannot forge an agent error.
 */
export const PROXY_UPSTREAM_HEADER = 'x-warren-upstream';

export function vmIdOfTenant(tenantId: string): string {
  return `ten-${tenantId.slice(4)}`;
}

export function tenantIdOfVm(vmId: string): string | undefined {
  return /^ten-[0-9a-f]{16}$/.test(vmId) ? `ten_${vmId.slice(4)}` : undefined;
}
