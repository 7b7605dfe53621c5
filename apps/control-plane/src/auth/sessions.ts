import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { isPlatformCookieName, SESSION_COOKIE, WarrenError } from '@warren/protocol';
import { now } from '../ids.ts';
import type { Db } from '../store/index.ts';
import type { Principal } from './principal.ts';
import { hashToken } from './tokens.ts';

/**
 * Browser sessions for the dashboard origins. Each tenant's dashboard is its own origin,
 * `<tenant>.<WARREN_DASHBOARD_DOMAIN>`, so the browser keeps one tenant's cookies and scripts
 * away from the others'. Logging in crosses origins in two steps:
 *
 * 1. `POST /v1/sessions` (bearer token) stores a one-time login code for one tenant and answers
 *    the link `<tenant's origin>/.warren/login?code=…`;
 * 2. the browser opens it: the code is consumed (once, before it expires, only on that tenant's
 *    origin) and a session is created, set as a host-only HttpOnly cookie of that origin.
 *
 * Codes and sessions are 32 random bytes; the store keeps only their SHA-256. A session acts as
 * the key that opened it, confined to one tenant, until it expires; deleting the key deletes its
 * codes and sessions (foreign keys), and the lookup joins the key as well.
 */

const SECRET = /^[A-Za-z0-9_-]{43}$/;

export interface OpenedSession {
  id: string;
  expiresAt: string;
  /** The tenant whose dashboard origin the session is for. */
  tenantId: string;
}

export async function createLoginCode(
  db: Db,
  principal: Principal,
  tenantId: string,
  ttlMs: number,
): Promise<{ code: string; expiresAt: string }> {
  const code = randomBytes(32).toString('base64url');
  const expiresAt = new Date(Date.now() + ttlMs).toISOString();
  await db
    .insertInto('dashboard_logins')
    .values({
      code_hash: hashToken(code),
      key_id: principal.keyId,
      tenant_id: tenantId,
      created_at: now(),
      expires_at: expiresAt,
    })
    .execute();
  return { code, expiresAt };
}

/**
 * Consumes a login code on the origin of tenant `tenantName` and opens a session for it. The
 * code is deleted whatever happens next, so it works once even when two redemptions race (only
 * one DELETE removes the row). A code of another tenant, an expired or unknown one is refused
 * with the same message.
 */
export async function redeemLoginCode(
  db: Db,
  code: string | undefined,
  tenantName: string,
  ttlMs: number,
): Promise<OpenedSession> {
  const refused = () =>
    new WarrenError(
      'UNAUTHENTICATED',
      'invalid, used or expired login link: ask for a new one with `POST /v1/sessions`',
    );
  if (code === undefined || !SECRET.test(code)) throw refused();
  const hash = hashToken(code);
  const row = await db
    .selectFrom('dashboard_logins')
    .innerJoin('tenants', 'tenants.id', 'dashboard_logins.tenant_id')
    .select([
      'dashboard_logins.key_id',
      'dashboard_logins.tenant_id',
      'dashboard_logins.expires_at',
      'tenants.name',
    ])
    .where('dashboard_logins.code_hash', '=', hash)
    .executeTakeFirst();
  if (!row) throw refused();
  const deleted = await db.deleteFrom('dashboard_logins').where('code_hash', '=', hash).executeTakeFirst();
  if (Number(deleted.numDeletedRows) !== 1 || row.expires_at <= now() || row.name !== tenantName) {
    throw refused();
  }
  const tenantId = row.tenant_id;
  const id = randomBytes(32).toString('base64url');
  const expiresAt = new Date(Date.now() + ttlMs).toISOString();
  await db
    .insertInto('sessions')
    .values({
      id_hash: hashToken(id),
      key_id: row.key_id,
      tenant_id: tenantId,
      created_at: now(),
      expires_at: expiresAt,
    })
    .execute();
  return { id, expiresAt, tenantId };
}

/** Ends the session named by the request's cookie; unknown or expired ones are ignored. */
export async function endSession(db: Db, headers: IncomingHttpHeaders): Promise<void> {
  const ids = sessionCookiesOf(headers.cookie);
  if (ids.length === 1 && SECRET.test(ids[0]!)) {
    await db.deleteFrom('sessions').where('id_hash', '=', hashToken(ids[0]!)).execute();
  }
}

export async function deleteExpiredSessions(db: Db): Promise<void> {
  await db.deleteFrom('sessions').where('expires_at', '<=', now()).execute();
  await db.deleteFrom('dashboard_logins').where('expires_at', '<=', now()).execute();
}

/**
 * Refuses a request that carries the session cookie more than once. A browser holds one
 * `__Host-` cookie of a name per origin; a second one means a page planted it (on a deeper
 * path, or through a browser that does not enforce the prefix), and taking either would let the
 * planter choose the session. Checked on every dashboard request, whatever its form.
 */
export function refuseDuplicateSessionCookies(headers: IncomingHttpHeaders): void {
  if (sessionCookiesOf(headers.cookie).length > 1) {
    throw new WarrenError(
      'DUPLICATE_SESSION_COOKIE',
      `the request carries the ${SESSION_COOKIE} cookie more than once; the platform takes neither`,
    );
  }
}

/**
 * Who a request on a dashboard origin is: the session named by its one session cookie, and
 * nothing else (an Authorization header is ignored there). `origin` is the dashboard origin's
 * host as the request names it (`demo.dashboard.localhost:7070`). Refused:
 * - a page of another origin (its `Origin` header names another host), and any request another
 *   site or a sibling dashboard origin makes (`Sec-Fetch-Site` cross-site or same-site) except a
 *   top-level navigation: SameSite does not separate sibling subdomains, so tenant B's page
 *   could otherwise send requests with the visitor's cookie to tenant A's origin (it could not
 *   read the answers, but they would act), or embed A's pages in frames and script tags.
 */
export async function authenticateSession(
  db: Db,
  headers: IncomingHttpHeaders,
  method: string,
): Promise<Principal> {
  refuseDuplicateSessionCookies(headers);
  const [id] = sessionCookiesOf(headers.cookie);
  if (id === undefined) {
    throw new WarrenError(
      'UNAUTHENTICATED',
      'not logged in to this dashboard: open a login link from `POST /v1/sessions` in this browser',
    );
  }
  const origin = headers.origin;
  const host = headers.host?.toLowerCase();
  if (origin !== undefined && hostOfOrigin(origin) !== host) {
    throw new WarrenError(
      'FORBIDDEN',
      `a dashboard session is accepted only from pages of its own origin, not from ${origin.slice(0, 100)}`,
    );
  }
  const site = headers['sec-fetch-site'];
  if (site === 'cross-site' || site === 'same-site') {
    const topLevel =
      headers['sec-fetch-mode'] === 'navigate' &&
      headers['sec-fetch-dest'] === 'document' &&
      (method === 'GET' || method === 'HEAD');
    if (!topLevel) {
      throw new WarrenError(
        'FORBIDDEN',
        `a dashboard session is not accepted on requests from another site or another dashboard (Sec-Fetch-Site: ${site}); only links that open the dashboard in a window`,
      );
    }
  }
  if (!SECRET.test(id)) throw invalidSession();
  const row = await db
    .selectFrom('sessions')
    .innerJoin('api_keys', 'api_keys.id', 'sessions.key_id')
    .select([
      'sessions.tenant_id',
      'api_keys.id as key_id',
      'api_keys.kind',
      'api_keys.tenant_id as key_tenant_id',
    ])
    .where('sessions.id_hash', '=', hashToken(id))
    .where('sessions.expires_at', '>', now())
    .executeTakeFirst();
  if (row?.kind === 'admin') return { kind: 'admin', keyId: row.key_id, onlyTenantId: row.tenant_id };
  if (row?.kind === 'tenant' && row.key_tenant_id === row.tenant_id) {
    return { kind: 'tenant', keyId: row.key_id, tenantId: row.tenant_id };
  }
  throw invalidSession();
}

function invalidSession(): WarrenError {
  return new WarrenError(
    'UNAUTHENTICATED',
    'invalid, expired or revoked session: open a new login link from `POST /v1/sessions`',
  );
}

function hostOfOrigin(origin: string): string | undefined {
  try {
    return new URL(origin).host.toLowerCase();
  } catch {
    return undefined;
  }
}

/** The values of every cookie named exactly like the session cookie, in header order. */
function sessionCookiesOf(cookieHeader: string | undefined): string[] {
  const out: string[] = [];
  for (const part of cookieHeader?.split(';') ?? []) {
    const eq = part.indexOf('=');
    if (eq >= 0 && part.slice(0, eq).trim() === SESSION_COOKIE) out.push(part.slice(eq + 1).trim());
  }
  return out;
}

/**
 * The Cookie header a VM may see: without the session cookie and anything named like it, and
 * without nameless cookies (`=x` reads as `x` to some parsers); undefined when nothing is left.
 */
export function cookiesForVm(cookieHeader: string | undefined): string | undefined {
  if (cookieHeader === undefined) return undefined;
  const kept = cookieHeader
    .split(';')
    .map((p) => p.trim())
    .filter((p) => {
      const eq = p.indexOf('=');
      const name = eq < 0 ? '' : p.slice(0, eq).trim();
      return name !== '' && !isPlatformCookieName(name);
    });
  return kept.length > 0 ? kept.join('; ') : undefined;
}

/**
 * Host-only (no Domain attribute: only this dashboard origin gets it), `__Host-` named (see
 * SESSION_COOKIE), HttpOnly (no script reads it), Secure (HTTPS only; browsers make an exception
 * for `*.localhost`), SameSite=Strict (no request from another site carries it).
 */
export function sessionCookie(id: string, maxAgeMs: number): string {
  return `${SESSION_COOKIE}=${id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=${Math.floor(maxAgeMs / 1000)}`;
}

export function clearedSessionCookie(): string {
  return `${SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0`;
}
