import type { Generated } from 'kysely';

/**
 * The tables as the store sees them. Portable types only (text, integer): timestamps are ISO
 * 8601 strings in UTC, which sort correctly as text; booleans are 0/1; JSON is text. That
 * keeps every query valid on SQLite and PostgreSQL alike.
 */
export interface Database {
  tenants: TenantsTable;
  hosts: HostsTable;
  api_keys: ApiKeysTable;
  operations: OperationsTable;
  audit_events: AuditEventsTable;
  sessions: SessionsTable;
  dashboard_logins: DashboardLoginsTable;
  console_sessions: ConsoleSessionsTable;
  tenant_sessions: TenantSessionsTable;
  backups: BackupsTable;
  tenant_keys: TenantKeysTable;
  backup_policies: BackupPoliciesTable;
  quarantined_vms: QuarantinedVmsTable;
  tenant_secrets: TenantSecretsTable;
  platform_keys: PlatformKeysTable;
  skill_packages: SkillPackagesTable;
  skill_channels: SkillChannelsTable;
  config_templates: ConfigTemplatesTable;
}

export interface TenantsTable {
  id: string;
  name: string;
  state: string;
  desired_state: string;
  /** Grows with every change of desired state; agents report which one they acted on. */
  generation: number;
  observed_generation: number;
  image_id: string;
  vcpus: number;
  memory_mib: number;
  disk_mib: number;
  quota_vcpus: number;
  quota_memory_mib: number;
  quota_disk_mib: number;
  host_id: string | null;
  egress_mode: string;
  /** JSON array of EgressRule. */
  egress_allowlist: string;
  bandwidth_mbit: number | null;
  dashboard_port: number;
  last_error_code: string | null;
  last_error_message: string | null;
  created_at: string;
  updated_at: string;
  /** The tenant's own idle timeout (migration 0010): null follows WARREN_IDLE_TIMEOUT, 0 is never. */
  idle_timeout_ms?: number | null;
  /** Failed start attempts its host reported (0010); null: none reported. */
  attempts_count?: number | null;
  /** When the host tries again; null with a count: it gave up. */
  next_attempt_at?: string | null;
  /** Grows at every change of the tenant's secrets (migration 0011); 0: never had any. */
  secrets_generation?: number;
  /** JSON array of skill references, `name@version` or `name@channel` (migration 0012). */
  skills?: string;
  /** JSON object: configuration file name -> the tenant's own values (0012). */
  config_values?: string;
  /** Grows with every change of `config_values` (0012). */
  config_version?: number;
}

export interface HostsTable {
  id: string;
  name: string;
  address: string;
  /** Presented to the agent's API; the agent chose it at join. */
  agent_token: string;
  cap_vcpus: number;
  cap_memory_mib: number;
  cap_disk_mib: number;
  alloc_vcpus: number;
  alloc_memory_mib: number;
  alloc_disk_mib: number;
  /**
   * What its suspended tenants hold of the alloc_* booking (migration 0010): recomputed from
   * the tenants' states in each heartbeat transaction, never moved by deltas.
   */
  susp_tenants: number;
  susp_vcpus: number;
  susp_memory_mib: number;
  health: string;
  draining: number;
  agent_version: string;
  /** JSON array of ImageSummary. */
  images: string;
  last_heartbeat_at: string | null;
  created_at: string;
}

export type CredentialKind = 'admin' | 'tenant' | 'host' | 'join';

/** Every bearer credential: admin token, tenant keys, host tokens, the join token. Only hashes. */
export interface ApiKeysTable {
  id: string;
  kind: CredentialKind;
  name: string;
  tenant_id: string | null;
  host_id: string | null;
  token_hash: string;
  /** The kind prefix and a few characters (auth/tokens.ts `displayPrefix`), never more. */
  prefix: string;
  /** 1: a join token that the first successful join consumes. */
  single_use: Generated<number>;
  /** 1: the admin or join token whose plaintext is in a state file; a restart replaces it when the file is lost. */
  bootstrap: Generated<number>;
  /** Refused from then on; null: does not expire. */
  expires_at: string | null;
  created_at: string;
  last_used_at: string | null;
}

export interface OperationsTable {
  id: string;
  kind: string;
  tenant_id: string;
  tenant_name: string;
  /** The tenant generation that completes this operation once observed. */
  generation: number;
  status: string;
  error_code: string | null;
  error_message: string | null;
  created_at: string;
  updated_at: string;
  /** A restore's host job id (migration 0008); null for the lifecycle kinds. */
  job?: string | null;
  /** JSON OperationProgress of a restore; null otherwise. */
  progress?: string | null;
}

export interface AuditEventsTable {
  id: Generated<number>;
  at: string;
  actor: string;
  action: string;
  target: string;
  tenant_id: string | null;
  result: string;
  status: number;
  request_id: string;
}

/** A browser session of the dashboard proxy; the cookie holds the id, the store its SHA-256. */
export interface SessionsTable {
  id_hash: string;
  /** The key (or admin token) that opened it; deleting the key deletes the session. */
  key_id: string;
  /** The one tenant whose dashboard it opens. */
  tenant_id: string;
  created_at: string;
  expires_at: string;
}

/** A one-time login code for a dashboard origin (`POST /v1/sessions`), redeemed at most once. */
export interface DashboardLoginsTable {
  code_hash: string;
  key_id: string;
  tenant_id: string;
  created_at: string;
  expires_at: string;
}

/** A web console session (migration 0013); the cookie holds the id, the store its SHA-256. */
export interface ConsoleSessionsTable {
  id_hash: string;
  /** The admin token or tenant key that signed in; deleting it deletes the session. */
  key_id: string;
  created_at: string;
  expires_at: string;
}

/** A safe-YOLO session (migration 0007). No credential is ever stored here. */
export interface TenantSessionsTable {
  id: string;
  tenant_id: string;
  /** The clean snapshot it reverts to. */
  snapshot: string;
  /** active | ending | ended | failed; at most one active or ending per tenant. */
  state: string;
  /** reverted | kept | expired; null until it ended. */
  outcome: string | null;
  /** The last failure (of the start, or of an end attempt). */
  error_code: string | null;
  error_message: string | null;
  created_at: string;
  expires_at: string;
  ended_at: string | null;
}

/** One backup in the catalog (migration 0008). Usable only when `complete`. */
export interface BackupsTable {
  id: string;
  tenant_id: string;
  tenant_name: string;
  /** running | complete | failed; at most one running per tenant. */
  state: string;
  /** manual | scheduled */
  trigger: string;
  include_root: number;
  host_id: string | null;
  created_at: string;
  completed_at: string | null;
  point_in_time: string | null;
  size_bytes: number;
  stored_bytes: number;
  mode: string | null;
  /** JSON BackupProgress. */
  progress: string | null;
  /** JSON BackupMetadata. */
  metadata: string;
  error_code: string | null;
  error_message: string | null;
  /** The last restore drill: running | passed | failed, or null when none ran. */
  drill_state: string | null;
  drill_at: string | null;
  drill_files: number | null;
  drill_error_code: string | null;
  drill_error_message: string | null;
  /** The scratch tenant a running drill restores into (its name): deleted when the drill ends, or at the next start. */
  drill_tenant: string | null;
}

/** A tenant's backup key, wrapped by the platform master key (never stored in the clear). */
export interface TenantKeysTable {
  tenant_id: string;
  wrapped: string;
  created_at: string;
}

/** A tenant's backup schedule and retention (BackupPolicy); no row: the defaults, no schedule. */
export interface BackupPoliciesTable {
  tenant_id: string;
  every_minutes: number | null;
  keep_last: number;
  keep_hourly: number;
  keep_daily: number;
  keep_weekly: number;
  updated_at: string;
}

/** An orphan VM a host keeps stopped (migration 0010), as its last heartbeat listed it. */
export interface QuarantinedVmsTable {
  host_id: string;
  vm_id: string;
  tenant_id: string;
  image_id: string;
  vcpus: number;
  memory_mib: number;
  disk_mib: number;
  quarantined_at: string;
  remove_after: string;
}

/** A tenant secret (migration 0011): its value sealed under its own key, that key wrapped by the master key. */
export interface TenantSecretsTable {
  tenant_id: string;
  name: string;
  version: number;
  wrapped_key: string;
  sealed: string;
  created_at: string;
  updated_at: string;
}

/** Keys of the platform's own (migration 0011), wrapped by the master key: `image-seed`. */
export interface PlatformKeysTable {
  name: string;
  wrapped: string;
  created_at: string;
}

/** One pushed skill package version (migration 0012); immutable. */
export interface SkillPackagesTable {
  name: string;
  version: string;
  /** sha256:<hex> of the bundle; its object key is skills/sha256/<hex>. */
  digest: string;
  size_bytes: number;
  /** JSON array of the skill folder names. */
  skills: string;
  created_at: string;
}

/** A channel of a package and its staged rollout (0012). */
export interface SkillChannelsTable {
  name: string;
  channel: string;
  version: string;
  previous_version: string | null;
  rollout_percent: number;
  /** Grows when `version` changes; hashed with the tenant id to pick the rollout's tenants. */
  generation: number;
  /** next-start | now */
  apply: string;
  updated_at: string;
}

/** One version of a platform-wide configuration template (0012). */
export interface ConfigTemplatesTable {
  file: string;
  version: number;
  /** JSON object. */
  body: string;
  created_at: string;
}
