import { WarrenError } from '@warren/protocol';
import { Kysely } from 'kysely';
import { Migrator } from 'kysely/migration';
import type { Database } from './database.ts';
import type { StoreDialect } from './dialect.ts';
import { migrationProvider } from './migrations/index.ts';

export type Db = Kysely<Database>;

export interface Store {
  readonly db: Db;
  readonly dialect: StoreDialect;
  close(): Promise<void>;
}

/** Opens the store and brings its schema up to date before anyone queries it. */
export async function openStore(dialect: StoreDialect): Promise<Store> {
  const db = new Kysely<Database>({ dialect: dialect.createKyselyDialect() });
  const migrator = new Migrator({ db, provider: migrationProvider(dialect) });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    await db.destroy();
    const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new WarrenError(
      'INTERNAL',
      `store migration ${failed} failed: ${String((error as Error)?.message ?? error)}`,
      {
        cause: error,
      },
    );
  }
  await dialect.prepare?.();
  let closed = false;
  return {
    db,
    dialect,
    async close() {
      if (closed) return;
      closed = true;
      await db.destroy();
    },
  };
}
