import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type ConsoleSession, ConsoleSignInRequest, parseOrThrow, WarrenError } from '@warren/protocol';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import {
  authenticateConsole,
  clearedConsoleCookie,
  consoleCookie,
  consoleSessionIdOf,
  csrfOf,
  endConsoleSession,
  openConsoleSession,
  refuseCrossOrigin,
} from '../../auth/console.ts';
import { authenticate, type Principal } from '../../auth/principal.ts';
import { hashToken } from '../../auth/tokens.ts';
import type { Api } from '../context.ts';
import { toWarrenError } from '../errors.ts';
import { CONSOLE_API_PREFIX, record } from '../route.ts';

/** The console's build output, next to this source tree unless WARREN_CONSOLE_DIR says otherwise. */
const DEFAULT_DIR = fileURLToPath(new URL('../../../../console/dist', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.json': 'application/json',
};

/**
 * Everything on the console's pages comes from this origin; no frame may show them (a drain
 * or delete button must not be clickjacked); xterm.js needs inline styles.
 */
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'";

/**
 * The web console: its sign-in (`/console/api/session`) and its static files (`/console/…`,
 * every unknown path answering the app's index.html so the app routes it). Its API calls go to
 * the `/console/api/v1/…` mirror of `/v1` (api/route.ts).
 */
export function consoleRoutes(app: FastifyInstance, api: Omit<Api, 'route'>): void {
  const dir = api.config.consoleDir ?? DEFAULT_DIR;
  const secure = (req: FastifyRequest) =>
    req.protocol === 'https' || req.headers['x-forwarded-proto'] === 'https';

  const fail = (reply: FastifyReply, error: unknown) => {
    const e = toWarrenError(error);
    return reply.status(e.status).header('cache-control', 'no-store').send(e.toBody());
  };
  const view = async (principal: Principal, id: string, expiresAt: string): Promise<ConsoleSession> => {
    let tenantName: string | null = null;
    if (principal.kind === 'tenant') {
      const t = await api.db
        .selectFrom('tenants')
        .select('name')
        .where('id', '=', principal.tenantId)
        .executeTakeFirst();
      tenantName = t?.name ?? null;
    }
    return {
      kind: principal.kind === 'admin' ? 'admin' : 'tenant',
      tenantId: principal.kind === 'tenant' ? principal.tenantId : null,
      tenantName,
      csrfToken: csrfOf(id),
      expiresAt,
    };
  };

  app.post(`${CONSOLE_API_PREFIX}/session`, async (req, reply) => {
    let principal: Principal | undefined;
    try {
      // No login CSRF: only the console's own page may sign the browser in.
      refuseCrossOrigin(req.headers, true);
      const body = parseOrThrow(ConsoleSignInRequest, req.body ?? {});
      principal = await authenticate(api.db, `Bearer ${body.token}`);
      api.rateLimiter.take(principal.keyId);
      if (principal.kind !== 'admin' && principal.kind !== 'tenant') {
        throw new WarrenError('FORBIDDEN', 'sign in to the console with the admin token or a tenant key');
      }
      const s = await openConsoleSession(api.db, principal.keyId, api.config.consoleSessionTtlMs);
      await record(api.db, req, principal, 'console.session.create', {}, 201, 'ok');
      return reply
        .status(201)
        .header('set-cookie', consoleCookie(s.id, api.config.consoleSessionTtlMs, secure(req)))
        .header('cache-control', 'no-store')
        .send(await view(principal, s.id, s.expiresAt));
    } catch (e) {
      return fail(reply, e);
    }
  });

  app.get(`${CONSOLE_API_PREFIX}/session`, async (req, reply) => {
    try {
      // Reading the session (and its CSRF token) needs only the cookie: the API sends no CORS
      // headers, so only a page of this origin can read the answer.
      const id = consoleSessionIdOf(req.headers);
      if (id === undefined) throw new WarrenError('UNAUTHENTICATED', 'not signed in to the console');
      refuseCrossOrigin(req.headers, false);
      const principal = await authenticateConsole(
        api.db,
        { ...req.headers, 'x-warren-csrf': csrfOf(id) },
        { websocket: false },
      );
      const row = await api.db
        .selectFrom('console_sessions')
        .select('expires_at')
        .where('id_hash', '=', hashToken(id))
        .executeTakeFirstOrThrow();
      return reply.header('cache-control', 'no-store').send(await view(principal, id, row.expires_at));
    } catch (e) {
      return fail(reply, e);
    }
  });

  app.delete(`${CONSOLE_API_PREFIX}/session`, async (req, reply) => {
    try {
      const principal = await authenticateConsole(api.db, req.headers, { websocket: false });
      await endConsoleSession(api.db, principal.sessionId);
      await record(api.db, req, principal, 'console.session.end', {}, 204, 'ok');
      return reply
        .status(204)
        .header('set-cookie', clearedConsoleCookie(secure(req)))
        .send();
    } catch (e) {
      return fail(reply, e);
    }
  });

  app.get('/console', async (_req, reply) => reply.redirect('/console/', 302));
  app.get('/console/*', async (req, reply) => {
    const rel = (req.params as { '*': string })['*'] ?? '';
    if (rel === 'api' || rel.startsWith('api/')) {
      return fail(
        reply,
        new WarrenError('NOT_FOUND', `no route ${req.method} /console/${rel.slice(0, 200)}`),
      );
    }
    const path = normalize(join(dir, decodeURIComponentSafe(rel)));
    const asset = path.startsWith(dir + sep) && extname(path) !== '' ? await fileOf(path) : undefined;
    const file = asset ?? (await fileOf(join(dir, 'index.html')));
    if (!file) {
      return fail(
        reply,
        new WarrenError(
          'NOT_FOUND',
          `the console is not built (${dir}): run \`npm run build -w @warren/console\``,
        ),
      );
    }
    reply
      .header('content-type', TYPES[extname(file.path)] ?? 'application/octet-stream')
      .header('content-length', String(file.size))
      .header('content-security-policy', CSP)
      .header('x-frame-options', 'DENY')
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      // Hashed asset names never change; index.html must, on each release.
      .header(
        'cache-control',
        asset && rel.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache',
      );
    return reply.send(createReadStream(file.path));
  });
}

async function fileOf(path: string): Promise<{ path: string; size: number } | undefined> {
  try {
    const s = await stat(path);
    return s.isFile() ? { path, size: s.size } : undefined;
  } catch {
    return undefined;
  }
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return '';
  }
}
