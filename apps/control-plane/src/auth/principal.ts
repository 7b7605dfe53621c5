import { WarrenError } from '@warren/protocol';
import { now } from '../ids.ts';
import type { Db } from '../store/index.ts';
import { hashToken, looksLikeToken } from './tokens.ts';

/**
 * Who is asking. Resolved from the bearer token (or a session cookie, on the routes that
 * take one) on every request, never cached. An admin session is confined to one tenant
 * (`onlyTenantId`); a bearer admin token is not.
 */
export type Principal =
  | { kind: 'admin'; keyId: string; onlyTenantId?: string }
  | { kind: 'tenant'; keyId: string; tenantId: string }
  | { kind: 'host'; keyId: string; hostId: string }
  /**
   * A join token. `hostId`: it may only re-join that host (an admin's `POST
   * /v1/hosts/{host}/rejoin`); `singleUse`: the join that uses it consumes it.
   */
  | { kind: 'join'; keyId: string; hostId?: string; singleUse: boolean };

export function actorOf(p: Principal | undefined): string {
  if (!p) return 'anonymous';
  switch (p.kind) {
    case 'admin':
      return 'admin';
    case 'tenant':
      return `key:${p.keyId}`;
    case 'host':
      return `host:${p.hostId}`;
    case 'join':
      return `join-token:${p.keyId}`;
  }
}

/**
 * Resolves `Authorization: Bearer <token>`. A revoked key is a deleted row, so it stops
 * working on the next request. The same message for every failure: no hint whether a token
 * ever existed.
 */
export async function authenticate(db: Db, header: string | undefined): Promise<Principal> {
  const m = header ? /^Bearer ([^\s]+)$/i.exec(header) : null;
  if (!m) {
    throw new WarrenError('UNAUTHENTICATED', 'missing bearer token: send `Authorization: Bearer <token>`');
  }
  const token = m[1]!;
  // Built only when thrown: an error captures a stack trace, too dear for every request.
  const invalid = () => new WarrenError('UNAUTHENTICATED', 'invalid or revoked token');
  if (!looksLikeToken(token)) throw invalid();
  const row = await db
    .selectFrom('api_keys')
    .select(['id', 'kind', 'tenant_id', 'host_id', 'last_used_at', 'single_use', 'expires_at'])
    .where('token_hash', '=', hashToken(token))
    .executeTakeFirst();
  if (!row) throw invalid();
  if (row.expires_at !== null && row.expires_at <= now()) throw invalid();
  // Minute granularity: enough to see which keys are in use without a write per request.
  const t = now();
  if (!row.last_used_at || row.last_used_at.slice(0, 16) !== t.slice(0, 16)) {
    await db.updateTable('api_keys').set({ last_used_at: t }).where('id', '=', row.id).execute();
  }
  switch (row.kind) {
    case 'admin':
      return { kind: 'admin', keyId: row.id };
    case 'tenant':
      if (!row.tenant_id) throw invalid();
      return { kind: 'tenant', keyId: row.id, tenantId: row.tenant_id };
    case 'host':
      if (!row.host_id) throw invalid();
      return { kind: 'host', keyId: row.id, hostId: row.host_id };
    case 'join':
      return {
        kind: 'join',
        keyId: row.id,
        ...(row.host_id ? { hostId: row.host_id } : {}),
        singleUse: row.single_use === 1,
      };
  }
}
