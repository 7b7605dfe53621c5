export type {
  ApiKey,
  AuditEvent,
  CreatedJoinToken,
  CreatedKey,
  CreateJoinTokenRequest,
  CreateTenantRequest,
  ErrorCode,
  ExecExit,
  Host,
  JoinToken,
  ListTenantsQuery,
  Operation,
  Tenant,
  TenantExecRequest,
  TenantOperationResponse,
  TenantState,
} from '@warren/protocol';
export { WarrenError } from '@warren/protocol';
export * from './audit.ts';
export * from './client.ts';
export * from './host-agent.ts';
export * from './hosts.ts';
export { Http, type HttpOptions, path } from './http.ts';
export * from './join-tokens.ts';
export * from './keys.ts';
export * from './node-fetch.ts';
export * from './operations.ts';
export * from './tenants.ts';
