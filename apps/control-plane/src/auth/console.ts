import { createHash, randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { CONSOLE_COOKIE, WarrenError } from '@warren/protocol';
import { now } from '../ids.ts';
import type { Db } from '../store/index.ts';
import type { Principal } from './principal.ts';
import { hashToken } from './tokens.ts';

/**
 * Web console sessions (`/console/`). The console is a page of the API's own origin; it signs
 * in once with an admin token or a tenant key, which is exchanged for a random session id in an
 * HttpOnly cookie (`POST /console/api/session`); the token itself is not kept by the browser.
 * The store keeps only the id's SHA-256, and the session acts as the key that signed in, with
 * exactly that key's scope, until it expires or is signed out.
 *
 * The cookie is read by `/console/api/…` only, never by `/v1`, so a page that is not the console
 * cannot make the browser drive the API with it. Every console API request must also:
 * - carry `X-Warren-CSRF`, a value derived from the session id that only a page able to read
 *   `GET /console/api/session` (the console itself: the API sends no CORS headers) can know;
 *   a custom header cannot be sent across origins without a CORS preflight, which is refused;
 * - not come from another origin: an `Origin` header must name the request's own host, and
 *   `Sec-Fetch-Site`, when the browser sends it, must be `same-origin`. A WebSocket handshake
 *   (the terminal) cannot carry a custom header, so for it `Origin` is required and must match.
 */

export const CSRF_HEADER = 'x-warren-csrf';
const SECRET = /^[A-Za-z0-9_-]{43}$/;

export function csrfOf(id: string): string {
  return createHash('sha256').update(`warren-console-csrf:${id}`).digest('base64url');
}

export async function openConsoleSession(
  db: Db,
  keyId: string,
  ttlMs: number,
): Promise<{ id: string; expiresAt: string }> {
  const id = randomBytes(32).toString('base64url');
  const expiresAt = new Date(Date.now() + ttlMs).toISOString();
  await db
    .insertInto('console_sessions')
    .values({ id_hash: hashToken(id), key_id: keyId, created_at: now(), expires_at: expiresAt })
    .execute();
  return { id, expiresAt };
}

export async function endConsoleSession(db: Db, id: string): Promise<void> {
  await db.deleteFrom('console_sessions').where('id_hash', '=', hashToken(id)).execute();
}

export async function deleteExpiredConsoleSessions(db: Db): Promise<void> {
  await db.deleteFrom('console_sessions').where('expires_at', '<=', now()).execute();
}

/**
 * Refuses what another origin could make a browser send: an `Origin` of another host,
 * `Sec-Fetch-Site` other than same-origin. Used by sign-in too (no login CSRF: a page of
 * another site cannot sign the visitor in under the attacker's key).
 */
export function refuseCrossOrigin(headers: IncomingHttpHeaders, requireOrigin: boolean): void {
  const host = headers.host?.toLowerCase();
  const origin = headers.origin;
  if (origin === undefined) {
    if (requireOrigin)
      throw new WarrenError('FORBIDDEN', 'the console accepts this request only with an Origin header');
  } else if (hostOf(origin) !== host) {
    throw new WarrenError(
      'FORBIDDEN',
      `the console accepts requests only from its own pages, not from ${origin.slice(0, 100)}`,
    );
  }
  const site = headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') {
    throw new WarrenError(
      'FORBIDDEN',
      `the console accepts requests only from its own pages (Sec-Fetch-Site: ${site})`,
    );
  }
}

/** The one console session id a request carries, or undefined. Two are refused: one was planted. */
export function consoleSessionIdOf(headers: IncomingHttpHeaders): string | undefined {
  const ids: string[] = [];
  for (const part of headers.cookie?.split(';') ?? []) {
    const eq = part.indexOf('=');
    if (eq >= 0 && part.slice(0, eq).trim() === CONSOLE_COOKIE) ids.push(part.slice(eq + 1).trim());
  }
  if (ids.length > 1) {
    throw new WarrenError(
      'DUPLICATE_SESSION_COOKIE',
      `the request carries the ${CONSOLE_COOKIE} cookie more than once; the platform takes neither`,
    );
  }
  return ids[0];
}

/**
 * Who a console API request is: the session named by its cookie (checkConsoleRequest then
 * applies the checks above). An Authorization header is ignored here, as cookies are on `/v1`.
 */
export async function lookupConsoleSession(
  db: Db,
  headers: IncomingHttpHeaders,
): Promise<Principal & { sessionId: string }> {
  const id = consoleSessionIdOf(headers);
  if (id === undefined || !SECRET.test(id)) {
    throw new WarrenError('UNAUTHENTICATED', 'not signed in to the console: sign in at /console/');
  }
  const row = await db
    .selectFrom('console_sessions')
    .innerJoin('api_keys', 'api_keys.id', 'console_sessions.key_id')
    .select(['api_keys.id as key_id', 'api_keys.kind', 'api_keys.tenant_id', 'api_keys.expires_at'])
    .where('console_sessions.id_hash', '=', hashToken(id))
    .where('console_sessions.expires_at', '>', now())
    .executeTakeFirst();
  let principal: (Principal & { sessionId: string }) | undefined;
  if (row && (row.expires_at === null || row.expires_at > now())) {
    if (row.kind === 'admin') principal = { kind: 'admin', keyId: row.key_id, sessionId: id };
    if (row.kind === 'tenant' && row.tenant_id) {
      principal = { kind: 'tenant', keyId: row.key_id, tenantId: row.tenant_id, sessionId: id };
    }
  }
  if (!principal) {
    throw new WarrenError(
      'UNAUTHENTICATED',
      'the console session expired, was signed out or its key revoked: sign in again',
    );
  }
  return principal;
}

/**
 * The checks against other origins, after the session was found: a refusal here concerns a
 * real session (and is recorded in the audit log, with its actor, like any refused request),
 * so made-up cookies cannot fill the log.
 */
export function checkConsoleRequest(
  headers: IncomingHttpHeaders,
  sessionId: string,
  opts: { websocket: boolean },
): void {
  refuseCrossOrigin(headers, opts.websocket);
  if (!opts.websocket && headers[CSRF_HEADER] !== csrfOf(sessionId)) {
    throw new WarrenError(
      'FORBIDDEN',
      `console requests need the ${CSRF_HEADER} header from GET /console/api/session (reload the console)`,
    );
  }
}

/** Both steps: the session, then the request's origin and CSRF token. */
export async function authenticateConsole(
  db: Db,
  headers: IncomingHttpHeaders,
  opts: { websocket: boolean },
): Promise<Principal & { sessionId: string }> {
  const principal = await lookupConsoleSession(db, headers);
  checkConsoleRequest(headers, principal.sessionId, opts);
  return principal;
}

/**
 * Host-only (no Domain), HttpOnly, SameSite=Strict, limited to `/console/`; Secure when the
 * console is reached over TLS (directly or through a TLS-terminating proxy that says so).
 */
export function consoleCookie(id: string, maxAgeMs: number, secure: boolean): string {
  return `${CONSOLE_COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/console/; Max-Age=${Math.floor(maxAgeMs / 1000)}${secure ? '; Secure' : ''}`;
}

export function clearedConsoleCookie(secure: boolean): string {
  return `${CONSOLE_COOKIE}=; HttpOnly; SameSite=Strict; Path=/console/; Max-Age=0${secure ? '; Secure' : ''}`;
}

function hostOf(origin: string): string | undefined {
  try {
    return new URL(origin).host.toLowerCase();
  } catch {
    return undefined;
  }
}
