import type { ControlPlaneConfig } from '../config.ts';
import { stateDirOf } from '../config.ts';
import type { StoreDialect } from './dialect.ts';
import { SqliteStoreDialect } from './sqlite/sqlite-dialect.ts';

export type { Database } from './database.ts';
export type { StoreDialect } from './dialect.ts';
export { SqliteStoreDialect } from './sqlite/sqlite-dialect.ts';
export { type Db, openStore, type Store } from './store.ts';

/** The dialect the configuration asks for. */
export function dialectFromConfig(config: ControlPlaneConfig): StoreDialect {
  switch (config.store) {
    case 'sqlite':
      return new SqliteStoreDialect(config.sqlitePath ?? `${stateDirOf(config)}/warren.db`);
  }
}
