import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { SESSION_COOKIE, WarrenError } from '@warren/protocol';
import { now } from '../ids.ts';
import type { Db } from '../store/index.ts';
import { authenticate, type Principal } from './principal.ts';
import { hashToken } from './tokens.ts';

/**
 * Browser sessions for the dashboard proxy: `POST /v1/sessions` (with a bearer token) sets an
 * HttpOnly cookie holding 32 random bytes; the store keeps only their SHA-256, like tokens. A
 * session acts as the key that opened it, confined to one tenant, until it expires; deleting
 * the key deletes its sessions (foreign key), and the lookup joins the key as well.
 */

const SESSION_ID = /^[A-Za-z0-9_-]{43}$/;
/** More cookies of that name than this are not a browser's doing; the rest are ignored. */
const MAX_SESSION_COOKIES = 4;

export interface OpenedSession {
  id: string;
  expiresAt: string;
}

export async function createSession(
  db: Db,
  principal: Principal,
  tenantId: string,
  ttlMs: number,
): Promise<OpenedSession> {
  const id = randomBytes(32).toString('base64url');
  const expiresAt = new Date(Date.now() + ttlMs).toISOString();
  await db
    .insertInto('sessions')
    .values({
      id_hash: hashToken(id),
      key_id: principal.keyId,
      tenant_id: tenantId,
      created_at: now(),
      expires_at: expiresAt,
    })
    .execute();
  return { id, expiresAt };
}

/** Ends the sessions named by the request's cookies; unknown or expired ones are ignored. */
export async function endSessions(db: Db, cookieHeader: string | undefined): Promise<void> {
  const hashes = sessionIdsOf(cookieHeader).map(hashToken);
  if (hashes.length > 0) await db.deleteFrom('sessions').where('id_hash', 'in', hashes).execute();
}

export async function deleteExpiredSessions(db: Db): Promise<void> {
  await db.deleteFrom('sessions').where('expires_at', '<=', now()).execute();
}

/**
 * Who a request is. With `allowSession`, a request without an Authorization header may
 * authenticate with the session cookie instead; a bearer token always wins, and routes that
 * do not allow sessions never look at cookies (so a page cannot drive the /v1 API with them).
 */
export async function authenticateRequest(
  db: Db,
  headers: IncomingHttpHeaders,
  allowSession: boolean,
): Promise<Principal> {
  if (headers.authorization !== undefined || !allowSession) return authenticate(db, headers.authorization);
  const ids = sessionIdsOf(headers.cookie);
  if (ids.length === 0) {
    throw new WarrenError(
      'UNAUTHENTICATED',
      'missing credentials: send `Authorization: Bearer <token>`, or log in with `POST /v1/sessions` for a session cookie',
    );
  }
  const principal = await sessionPrincipal(db, ids);
  // SameSite=Strict keeps other sites' requests from carrying the cookie, but not other
  // origins of the same site (another subdomain): a browser names the page's origin on
  // cross-origin requests and on every WebSocket handshake, and it must be this host.
  const origin = headers.origin;
  if (origin !== undefined && hostOfOrigin(origin) !== headers.host?.toLowerCase()) {
    throw new WarrenError(
      'FORBIDDEN',
      `a session cookie is accepted only from pages of this host, not from ${origin.slice(0, 100)}`,
    );
  }
  return principal;
}

async function sessionPrincipal(db: Db, ids: string[]): Promise<Principal> {
  const rows = await db
    .selectFrom('sessions')
    .innerJoin('api_keys', 'api_keys.id', 'sessions.key_id')
    .select([
      'sessions.id_hash',
      'sessions.tenant_id',
      'api_keys.id as key_id',
      'api_keys.kind',
      'api_keys.tenant_id as key_tenant_id',
    ])
    .where('sessions.id_hash', 'in', ids.map(hashToken))
    .where('sessions.expires_at', '>', now())
    .execute();
  // A dashboard's script can add (not read or replace) cookies of the same name on deeper
  // paths, which the browser then sends first; the order of the header decides nothing here.
  for (const id of ids) {
    const row = rows.find((r) => r.id_hash === hashToken(id));
    if (row?.kind === 'admin') return { kind: 'admin', keyId: row.key_id, onlyTenantId: row.tenant_id };
    if (row?.kind === 'tenant' && row.key_tenant_id === row.tenant_id) {
      return { kind: 'tenant', keyId: row.key_id, tenantId: row.tenant_id };
    }
  }
  throw new WarrenError(
    'UNAUTHENTICATED',
    'invalid, expired or revoked session: log in again with `POST /v1/sessions`',
  );
}

function hostOfOrigin(origin: string): string | undefined {
  try {
    return new URL(origin).host.toLowerCase();
  } catch {
    return undefined;
  }
}

/** Every well-formed session id among the request's cookies, in header order. */
export function sessionIdsOf(cookieHeader: string | undefined): string[] {
  const out: string[] = [];
  for (const part of cookieHeader?.split(';') ?? []) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== SESSION_COOKIE) continue;
    const value = part.slice(eq + 1).trim();
    if (SESSION_ID.test(value) && out.length < MAX_SESSION_COOKIES) out.push(value);
  }
  return out;
}

/** The Cookie header without the session cookie, for forwarding; undefined when nothing is left. */
export function withoutSessionCookie(cookieHeader: string | undefined): string | undefined {
  if (cookieHeader === undefined) return undefined;
  const kept = cookieHeader
    .split(';')
    .map((p) => p.trim())
    .filter((p) => p !== '' && (p.includes('=') ? p.slice(0, p.indexOf('=')).trim() : p) !== SESSION_COOKIE);
  return kept.length > 0 ? kept.join('; ') : undefined;
}

/**
 * Secure: browsers send it only over HTTPS, except to http://localhost. HttpOnly: no script
 * can read it, not even a dashboard's on the same origin. SameSite=Strict: no request from
 * another site carries it.
 */
export function sessionCookie(id: string, maxAgeMs: number): string {
  return `${SESSION_COOKIE}=${id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=${Math.floor(maxAgeMs / 1000)}`;
}

export function clearedSessionCookie(): string {
  return `${SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0`;
}
