import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import { type Dialect, type SqliteDatabase, SqliteDialect } from 'kysely';
import type { StoreDialect } from '../dialect.ts';

/**
 * SQLite through Node's built-in `node:sqlite`: no native addon to compile, so `npm install`
 * needs no toolchain and no prebuilt binary download. Kysely's SqliteDialect wants a
 * better-sqlite3-shaped database; `adapt` maps node:sqlite onto that small interface.
 */
export class SqliteStoreDialect implements StoreDialect {
  readonly name = 'sqlite';
  readonly autoIncrement = 'rowid' as const;
  readonly #path: string;

  /** `path` is a file, or `:memory:` for a private in-memory database. */
  constructor(path: string) {
    this.#path = path;
  }

  createKyselyDialect(): Dialect {
    return new SqliteDialect({ database: async () => adapt(this.#open()) });
  }

  #open(): DatabaseSync {
    if (this.#path !== ':memory:') mkdirSync(dirname(this.#path), { recursive: true, mode: 0o700 });
    const db = new DatabaseSync(this.#path);
    // WAL: readers do not block the writer; synchronous=FULL: a committed placement survives
    // a power cut, not only a process crash. busy_timeout covers a second process (the CLI).
    db.exec('PRAGMA journal_mode = WAL');
    db.exec('PRAGMA synchronous = FULL');
    db.exec('PRAGMA foreign_keys = ON');
    db.exec('PRAGMA busy_timeout = 5000');
    return db;
  }
}

/** Statements kept prepared: Kysely sends the same few hundred SQL texts over and over. */
const STATEMENT_CACHE = 500;

function adapt(db: DatabaseSync): SqliteDatabase {
  // Preparing costs several times more than running a primary-key lookup (bench/README.md).
  // `reader` is cached too: columns() is a native call that costs more than a key lookup.
  const cache = new Map<string, { stmt: StatementSync; reader: boolean }>();
  return {
    close: () => db.close(),
    prepare(sql: string) {
      let entry = cache.get(sql);
      if (!entry) {
        const stmt = db.prepare(sql);
        entry = { stmt, reader: stmt.columns().length > 0 };
        if (cache.size >= STATEMENT_CACHE) cache.delete(cache.keys().next().value!);
        cache.set(sql, entry);
      }
      const s = entry.stmt;
      const args = (p: ReadonlyArray<unknown>) => p.map(toSqlite);
      return {
        reader: entry.reader,
        all: (p) => s.all(...args(p)),
        run: (p) => s.run(...args(p)),
        iterate: (p) => s.iterate(...args(p)),
      };
    },
  };
}

/** node:sqlite binds numbers, strings, bigints, buffers and null; booleans become 0/1. */
function toSqlite(v: unknown): SQLInputValue {
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (v === undefined) return null;
  return v as SQLInputValue;
}
