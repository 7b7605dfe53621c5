import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { WarrenError } from '@warren/protocol';
import type { FsObjectStoreConfig } from '../config.ts';
import {
  assertAge,
  assertKey,
  assertPrefix,
  checkedBody,
  type IncompleteCollected,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
} from '../object-store.ts';

/** The temporary name a put writes to before its rename (a dot name no key can have). */
const TEMP_PREFIX = '.tmp-';

const errno = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | undefined)?.code;

/**
 * Objects as files under one root directory: the embedded default. A put writes a temporary
 * file beside the target (a dot name no key can have), fsyncs it, renames it into place and
 * fsyncs the directory, so readers see the old object, the new one, or none: never a part.
 * Files are 0600 and directories 0700 whatever the umask.
 */
export class FsObjectStore implements ObjectStore {
  readonly name = 'fs';
  readonly #root: string;

  constructor(config: Pick<FsObjectStoreConfig, 'root'>) {
    this.#root = config.root;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    assertKey(key);
    const source = checkedBody(key, body, options.contentLength);
    const target = join(this.#root, key);
    const dir = dirname(target);
    const temp = join(dir, `${TEMP_PREFIX}${randomUUID()}`);
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const handle = await open(
        temp,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
      try {
        // Awaiting each write is the backpressure: memory holds one chunk at a time.
        for await (const chunk of source) await handle.write(chunk as Buffer);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, target);
      await this.#syncDir(dir);
    } catch (err) {
      source.destroy();
      await unlink(temp).catch(() => {});
      if (errno(err) === 'ENOTDIR')
        throw this.#error(key, Object.assign(new Error('ENOTDIR'), { code: 'EISDIR' }));
      throw this.#error(key, err);
    }
  }

  async get(key: string): Promise<Readable> {
    assertKey(key);
    try {
      const handle = await open(join(this.#root, key), constants.O_RDONLY | constants.O_NOFOLLOW);
      // A directory opens too (the key is only a prefix of others): that is no object.
      const isFile = await handle.stat().then(
        (info) => info.isFile(),
        () => false,
      );
      if (!isFile) {
        await handle.close();
        throw Object.assign(new Error('not a file'), { code: 'ENOENT' });
      }
      // 1 MiB reads: backup chunks are read whole, in one or two pieces rather than sixteen.
      return handle.createReadStream({ highWaterMark: 1024 * 1024 });
    } catch (err) {
      throw this.#error(key, err);
    }
  }

  async head(key: string): Promise<{ size: number } | undefined> {
    assertKey(key);
    try {
      const info = await stat(join(this.#root, key));
      return info.isFile() ? { size: info.size } : undefined;
    } catch (err) {
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return undefined;
      throw this.#error(key, err);
    }
  }

  async delete(key: string): Promise<void> {
    assertKey(key);
    try {
      await unlink(join(this.#root, key));
    } catch (err) {
      // Directories are left behind: removing one could race a put that just made it.
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return;
      throw this.#error(key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    assertPrefix(prefix);
    // Start at the deepest directory the prefix names; the rest of it filters names.
    const base = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    yield* this.#walk(base, prefix);
  }

  /**
   * A put that crashed before its rename leaves its temporary file; the age is the file's
   * mtime, which every write of a running put moves forward.
   */
  async collectIncomplete(olderThanMs: number): Promise<IncompleteCollected> {
    assertAge(olderThanMs);
    const cutoff = Date.now() - olderThanMs;
    let removed = 0;
    const sweep = async (dir: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return;
        throw this.#error(dir.slice(this.#root.length + 1) || '(root)', err);
      }
      for (const e of entries) {
        const path = join(dir, e.name);
        // Symbolic links are neither followed nor removed: nothing here makes them.
        if (e.isDirectory()) await sweep(path);
        else if (e.isFile() && e.name.startsWith(TEMP_PREFIX)) {
          const info = await lstat(path).catch(() => undefined);
          if (!info || info.mtimeMs >= cutoff) continue;
          // ENOENT: its put finished or cleaned up meanwhile.
          await unlink(path).then(
            () => removed++,
            (err) => {
              if (errno(err) !== 'ENOENT') throw this.#error(e.name, err);
            },
          );
        }
      }
    };
    await sweep(this.#root);
    return { removed };
  }

  async close(): Promise<void> {}

  /** Depth first with dirs sorted as `name/`: that yields keys in byte order, as S3 lists them. */
  async *#walk(relDir: string, prefix: string): AsyncGenerator<ObjectInfo> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await readdir(join(this.#root, relDir), { withFileTypes: true });
    } catch (err) {
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return;
      throw this.#error(relDir, err);
    }
    const named = entries
      .filter((e) => !e.name.startsWith('.') && (e.isFile() || e.isDirectory()))
      .map((e) => ({ e, sortName: `${relDir}${e.name}${e.isDirectory() ? '/' : ''}` }))
      .sort((a, b) => (a.sortName < b.sortName ? -1 : a.sortName > b.sortName ? 1 : 0));
    for (const { e, sortName } of named) {
      if (e.isDirectory()) {
        // Descend only where keys below could still match the prefix.
        if (sortName.startsWith(prefix) || prefix.startsWith(sortName)) yield* this.#walk(sortName, prefix);
      } else if (sortName.startsWith(prefix)) {
        const info = await stat(join(this.#root, sortName)).catch(() => undefined);
        if (info?.isFile()) yield { key: sortName, size: info.size };
      }
    }
  }

  async #syncDir(dir: string): Promise<void> {
    const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  #error(key: string, err: unknown): WarrenError {
    if (err instanceof WarrenError) return err;
    const code = errno(err);
    if (code === 'ENOENT' || code === 'ENOTDIR')
      return new WarrenError('NOT_FOUND', `object ${key} does not exist`, { cause: err });
    if (code === 'EISDIR' || code === 'EEXIST' || code === 'ELOOP')
      return new WarrenError('CONFLICT', `object ${key} collides with another key used as a directory`, {
        cause: err,
      });
    return new WarrenError(
      'OBJECT_STORE_UNAVAILABLE',
      `object ${key}: filesystem store failed (${code ?? String(err)})`,
      {
        cause: err,
      },
    );
  }
}
