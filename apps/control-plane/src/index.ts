export type { RegisteredRoute, RouteAuth } from './api/route.ts';
export { DISPLAY_BODY_CHARS, displayPrefix, newToken, TOKEN_PREFIX } from './auth/tokens.ts';
export type { BackupFormat } from './backups/format.ts';
export { libraryFormat } from './backups/library-format.ts';
export { type KeepRules, pruneSelection } from './backups/retention.ts';
export {
  CONFIG_ENV,
  ControlPlaneConfig,
  loadConfig,
  masterKeyFileOf,
  objectStoreConfigOf,
  stateDirOf,
} from './config.ts';
export { type ControlPlane, openControlPlane } from './control-plane.ts';
export { placeTenant } from './scheduler/place.ts';
export { fits, type HostCandidate, rank, score } from './scheduler/policy.ts';
export { imageSeed, type RotationResult, rotateMasterKey } from './secrets/rotate.ts';
export { rotateMasterKeyFiles } from './secrets/rotate-command.ts';
export { openSecret } from './secrets/seal.ts';
export { openStore, SqliteStoreDialect, type Store, type StoreDialect } from './store/index.ts';
export { migrationProvider } from './store/migrations/index.ts';
export { TenantStreams } from './tenants/concurrency.ts';
