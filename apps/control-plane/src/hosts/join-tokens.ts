import { type JoinToken, WarrenError } from '@warren/protocol';
import { insertCredential, type StoredCredential } from '../auth/credentials.ts';
import type { HostsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';

/**
 * Join tokens besides the one in the `join-token` file: rotation (create a new one, revoke the
 * old), single-use tokens for one new host each, and re-join tokens that let exactly one
 * existing host join again (see HostService.join for why that needs one).
 */
export async function createJoinToken(
  db: Db,
  request: { name?: string | undefined; singleUse: boolean },
): Promise<{ joinToken: JoinToken; token: string }> {
  const { row, token } = await insertCredential(db, {
    kind: 'join',
    name: request.name ?? (request.singleUse ? 'single-use join token' : 'join token'),
    singleUse: request.singleUse,
  });
  return { joinToken: joinTokenView({ ...row, bootstrap: 0 }), token };
}

/**
 * A single-use join token for re-joining `host` only, valid for `ttlMs`: for an agent that
 * lost its credentials, or a machine that replaces a dead one under the same name. The host's
 * current token keeps working until the re-join rotates it.
 */
export async function createRejoinToken(
  db: Db,
  host: Pick<HostsTable, 'id' | 'name'>,
  ttlMs: number,
): Promise<{ joinToken: JoinToken; token: string }> {
  const { row, token } = await insertCredential(db, {
    kind: 'join',
    name: `re-join of host ${host.name}`,
    hostId: host.id,
    singleUse: true,
    expiresAt: new Date(Date.now() + ttlMs).toISOString(),
  });
  return { joinToken: joinTokenView({ ...row, bootstrap: 0 }), token };
}

export async function listJoinTokens(db: Db): Promise<JoinToken[]> {
  const rows = await db
    .selectFrom('api_keys')
    .select([
      'id',
      'kind',
      'name',
      'tenant_id',
      'host_id',
      'prefix',
      'single_use',
      'bootstrap',
      'expires_at',
      'created_at',
      'last_used_at',
    ])
    .where('kind', '=', 'join')
    .orderBy('created_at')
    .execute();
  return rows.map(joinTokenView);
}

/** Refused from the next request on. Revoking the file's token: a restart writes a new one. */
export async function revokeJoinToken(db: Db, id: string): Promise<void> {
  const r = await db
    .deleteFrom('api_keys')
    .where('id', '=', id)
    .where('kind', '=', 'join')
    .executeTakeFirst();
  if (Number(r.numDeletedRows) === 0) {
    throw new WarrenError('NOT_FOUND', `no join token ${id}; see \`warren join-token list\``);
  }
}

function joinTokenView(r: StoredCredential & { bootstrap: number }): JoinToken {
  return {
    id: r.id,
    name: r.name,
    prefix: r.prefix,
    singleUse: r.single_use === 1,
    hostId: r.host_id,
    bootstrap: r.bootstrap === 1,
    expiresAt: r.expires_at,
    createdAt: r.created_at,
    lastUsedAt: r.last_used_at,
  };
}
