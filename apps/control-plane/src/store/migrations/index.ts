import type { Migration, MigrationProvider } from 'kysely/migration';
import type { StoreDialect } from '../dialect.ts';
import * as m0001 from './0001-initial.ts';
import * as m0002 from './0002-network.ts';
import * as m0003 from './0003-sessions.ts';
import * as m0004 from './0004-indexes.ts';
import * as m0005 from './0005-credentials-retention.ts';
import * as m0006 from './0006-dashboard-logins.ts';
import * as m0007 from './0007-tenant-sessions.ts';
import * as m0008 from './0008-backups.ts';
import * as m0009 from './0009-backup-drills.ts';
import * as m0010 from './0010-idle-health.ts';
import * as m0011 from './0011-secrets.ts';
import * as m0012 from './0012-skills-config.ts';
import * as m0013 from './0013-console-sessions.ts';

/**
 * Every migration, in order. Names sort lexically; never edit one that has shipped, add the
 * next. Each gets the dialect so the rare non-portable bit (identity columns) can differ.
 */
const MIGRATIONS = {
  '0001-initial': m0001,
  '0002-network': m0002,
  '0003-sessions': m0003,
  '0004-indexes': m0004,
  '0005-credentials-retention': m0005,
  '0006-dashboard-logins': m0006,
  '0007-tenant-sessions': m0007,
  '0008-backups': m0008,
  '0009-backup-drills': m0009,
  '0010-idle-health': m0010,
  '0011-secrets': m0011,
  '0012-skills-config': m0012,
  '0013-console-sessions': m0013,
};

export function migrationProvider(dialect: StoreDialect): MigrationProvider {
  return {
    async getMigrations() {
      const out: Record<string, Migration> = {};
      for (const [name, m] of Object.entries(MIGRATIONS)) out[name] = { up: (db) => m.up(db, dialect) };
      return out;
    },
  };
}
