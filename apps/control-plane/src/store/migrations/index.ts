import type { Migration, MigrationProvider } from 'kysely/migration';
import type { StoreDialect } from '../dialect.ts';
import * as m0001 from './0001-initial.ts';
import * as m0002 from './0002-network.ts';

/**
 * Every migration, in order. Names sort lexically; never edit one that has shipped, add the
 * next. Each gets the dialect so the rare non-portable bit (identity columns) can differ.
 */
const MIGRATIONS = { '0001-initial': m0001, '0002-network': m0002 };

export function migrationProvider(dialect: StoreDialect): MigrationProvider {
  return {
    async getMigrations() {
      const out: Record<string, Migration> = {};
      for (const [name, m] of Object.entries(MIGRATIONS)) out[name] = { up: (db) => m.up(db, dialect) };
      return out;
    },
  };
}
