import type { Dialect } from 'kysely';

/**
 * A metadata store backend, shaped like Kysely's dialects: a small factory plus capability
 * flags with safe defaults, so callers ask "can you?" instead of branching on names. Adding
 * PostgreSQL means one more folder next to sqlite/ and one more entry in the contract tests.
 */
export interface StoreDialect {
  readonly name: string;
  /** The Kysely dialect that talks to the database. */
  createKyselyDialect(): Dialect;
  /** Integer primary keys that the database numbers itself (SQLite rowid, PG identity). */
  readonly autoIncrement: 'rowid' | 'identity';
  /** Runs once after migrations, e.g. to set pragmas. */
  prepare?(): Promise<void>;
}
