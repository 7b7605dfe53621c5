import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CredentialKind } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import { insertCredential } from './credentials.ts';
import { hashToken } from './tokens.ts';

export interface BootstrapResult {
  adminTokenPath: string;
  joinTokenPath: string;
  /** True when the admin token was created by this start. */
  createdAdmin: boolean;
}

/**
 * On first start: creates the admin token and the join token, stores their hashes, and writes
 * each once to a root-only file (0600 in a 0700 directory). Later starts keep them. If a token
 * file was lost (or its token revoked), a new token replaces the stored one, so whoever holds
 * the files holds the keys. Join tokens made with `POST /v1/join-tokens` are not touched.
 */
export async function bootstrapCredentials(db: Db, stateDir: string): Promise<BootstrapResult> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await chmod(stateDir, 0o700);
  const adminTokenPath = join(stateDir, 'admin-token');
  const joinTokenPath = join(stateDir, 'join-token');
  const createdAdmin = await ensure(db, 'admin', adminTokenPath);
  await ensure(db, 'join', joinTokenPath);
  return { adminTokenPath, joinTokenPath, createdAdmin };
}

async function ensure(db: Db, kind: CredentialKind, path: string): Promise<boolean> {
  const existing = await db
    .selectFrom('api_keys')
    .select(['id', 'token_hash'])
    .where('kind', '=', kind)
    .where('bootstrap', '=', 1)
    .execute();
  const onDisk = (await readFile(path, 'utf8').catch(() => '')).trim();
  if (onDisk && existing.some((r) => r.token_hash === hashToken(onDisk))) return false;
  const token = await db.transaction().execute(async (trx) => {
    await trx.deleteFrom('api_keys').where('kind', '=', kind).where('bootstrap', '=', 1).execute();
    const created = await insertCredential(trx, {
      kind,
      name: kind === 'admin' ? 'admin token' : 'host join token',
      bootstrap: true,
    });
    return created.token;
  });
  const tmp = `${path}.tmp`;
  await writeFile(tmp, `${token}\n`, { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, path);
  return true;
}
