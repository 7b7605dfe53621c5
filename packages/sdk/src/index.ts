export type {
  ApiKey,
  AuditEvent,
  Backup,
  BackupPolicy,
  BackupProgress,
  ChangeList,
  CreatedJoinToken,
  CreatedKey,
  CreatedSnapshot,
  CreateJoinTokenRequest,
  CreateSnapshotRequest,
  CreateTenantRequest,
  CreateTenantSessionRequest,
  EndTenantSessionRequest,
  ErrorCode,
  EventType,
  ExecExit,
  FileChange,
  Host,
  JoinToken,
  ListTenantsQuery,
  Operation,
  PlatformEvent,
  RevertResult,
  SkillChannel,
  SkillList,
  SkillPackage,
  Snapshot,
  Tenant,
  TenantExecRequest,
  TenantOperationResponse,
  TenantSession,
  TenantState,
  TenantVersions,
  VerifyResult,
} from '@warren/protocol';
export { WarrenError } from '@warren/protocol';
export * from './audit.ts';
export * from './backups.ts';
export * from './client.ts';
export * from './events.ts';
export * from './host-agent.ts';
export * from './hosts.ts';
export { Http, type HttpOptions, path } from './http.ts';
export * from './join-tokens.ts';
export * from './keys.ts';
export * from './node-fetch.ts';
export * from './operations.ts';
export * from './secrets.ts';
export * from './skills.ts';
export * from './snapshots.ts';
export * from './tenants.ts';
