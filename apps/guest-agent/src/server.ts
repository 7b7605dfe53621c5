import http2, { type Http2Session, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { Duplex } from 'node:stream';
import {
  FreezeRequest,
  GUEST_ROUTES,
  GuestCredentials,
  GuestSecrets,
  IdentityRequest,
  parseOrThrow,
  RestoredRequest,
  ShutdownRequest,
  WarrenError,
} from '@warren/protocol/guest';
import { handleExec } from './exec.ts';
import { handleList, handleMkdir, handleRead, handleRemove, handleStat, handleWrite } from './files.ts';
import { VolumeFreeze } from './freeze.ts';
import { health } from './health.ts';
import { takeIdentity } from './identity.ts';
import { readJsonBody, sendError, sendJson } from './respond.ts';
import { fixUpAfterRestore, placeCredentials, placeSecrets, wipeCredentials } from './restore.ts';

export interface AgentOptions {
  /** Called after a shutdown request was answered. */
  onShutdown(action: 'poweroff' | 'reboot'): void;
  /** Called after a credentials wipe with `restart` was answered: the process should exit (init starts a new one). */
  onRestart(): void;
}

/** How long a restart after a credentials wipe waits for the host to close its session. */
const RESTART_GRACE_MS = 5_000;

type Handler = (stream: ServerHttp2Stream, query: URLSearchParams) => Promise<void> | void;

export function createAgentServer(options: AgentOptions, volume = new VolumeFreeze()): http2.Http2Server {
  // File calls wait out a backup's freeze here, not in a pool thread blocked on the volume (freeze.ts).
  const unfrozen =
    (handler: Handler): Handler =>
    async (s, q) => {
      await volume.whenThawed();
      return handler(s, q);
    };
  const routes: Record<string, Handler> = {
    [`GET ${GUEST_ROUTES.health}`]: async (s) => sendJson(s, 200, await health()),
    [`POST ${GUEST_ROUTES.exec}`]: (s) => handleExec(s),
    [`GET ${GUEST_ROUTES.fileContent}`]: unfrozen(handleRead),
    [`PUT ${GUEST_ROUTES.fileContent}`]: unfrozen(handleWrite),
    [`GET ${GUEST_ROUTES.fileStat}`]: unfrozen(handleStat),
    [`GET ${GUEST_ROUTES.fileList}`]: unfrozen(handleList),
    [`POST ${GUEST_ROUTES.mkdir}`]: unfrozen((s) => handleMkdir(s)),
    [`POST ${GUEST_ROUTES.remove}`]: unfrozen((s) => handleRemove(s)),
    [`POST ${GUEST_ROUTES.freeze}`]: async (s) => {
      const req = parseOrThrow(FreezeRequest, await readJsonBody(s));
      sendJson(s, 200, await volume.freeze(req.timeoutMs));
    },
    [`POST ${GUEST_ROUTES.thaw}`]: async (s) => sendJson(s, 200, { thawed: await volume.thaw() }),
    [`POST ${GUEST_ROUTES.shutdown}`]: async (s) => {
      const req = parseOrThrow(ShutdownRequest, await readJsonBody(s));
      s.on('close', () => options.onShutdown(req.action));
      sendJson(s, 202, { accepted: req.action });
    },
    [`POST ${GUEST_ROUTES.restored}`]: async (s) => {
      const receivedAt = Date.now();
      const req = parseOrThrow(RestoredRequest, await readJsonBody(s));
      sendJson(s, 200, await fixUpAfterRestore(req, receivedAt));
    },
    [`POST ${GUEST_ROUTES.identity}`]: async (s) => {
      const receivedAt = Date.now();
      const req = parseOrThrow(IdentityRequest, await readJsonBody(s));
      sendJson(s, 200, await takeIdentity(req, receivedAt));
    },
    // Filler the host sends after a credentials wipe: passing through the port's receive
    // buffers (the kernel reuses them, never frees them) overwrites what the credentials left there.
    [`PUT ${GUEST_ROUTES.scrub}`]: async (s) => {
      let bytes = 0;
      for await (const chunk of s) bytes += (chunk as Buffer).length;
      sendJson(s, 200, { bytes });
    },
    [`PUT ${GUEST_ROUTES.credentials}`]: async (s) => {
      const req = parseOrThrow(GuestCredentials, await readJsonBody(s, 4 * 1024 * 1024));
      await placeCredentials(req);
      sendJson(s, 200, { files: Object.keys(req.files).length, restarting: false });
    },
    // The tenant's secrets, the complete set: kept as they are until a snapshot or suspend
    // wipes them with the credentials (DELETE below), then the host puts them back.
    [`PUT ${GUEST_ROUTES.secrets}`]: async (s) => {
      const req = parseOrThrow(GuestSecrets, await readJsonBody(s, 16 * 1024 * 1024));
      sendJson(s, 200, await placeSecrets(req));
    },
    [`DELETE ${GUEST_ROUTES.credentials}`]: async (s, query) => {
      const restarting = query.get('restart') === '1';
      const files = await wipeCredentials();
      if (restarting) {
        // Not at the stream's end: the answer may still sit in the port's write queue. The host
        // closes its session once it has the answer; a host that never does gets a few seconds.
        let done = false;
        const restart = () => {
          if (done) return;
          done = true;
          options.onRestart();
        };
        s.session?.once('close', restart);
        s.session?.once('goaway', restart);
        setTimeout(restart, RESTART_GRACE_MS).unref();
      }
      sendJson(s, 200, { files, restarting });
    },
  };

  const server = http2.createServer({
    settings: { maxConcurrentStreams: 256, initialWindowSize: 8 * 1024 * 1024, maxFrameSize: 1024 * 1024 },
  });
  server.on('session', (session) =>
    // Destroyed already if the host's first bytes broke it: setting the window would throw.
    session.on('connect', () => {
      if (!session.destroyed) session.setLocalWindowSize(32 * 1024 * 1024);
    }),
  );
  server.setTimeout(0);
  server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    const url = new URL(String(headers[':path'] ?? '/'), 'http://guest');
    const handler = routes[`${headers[':method']} ${url.pathname}`];
    stream.on('error', () => {
      // A reset stream is the host cancelling; handlers clean up on 'close'.
    });
    if (!handler) {
      sendError(stream, new WarrenError('NOT_FOUND', `no route ${headers[':method']} ${url.pathname}`));
      return;
    }
    Promise.resolve()
      .then(() => handler(stream, url.searchParams))
      .catch((e) => sendError(stream, e));
  });
  return server;
}

/** Serves one HTTP/2 session over `channel`; resolves when the session ends. */
export function serveChannel(server: http2.Http2Server, channel: Duplex): Promise<void> {
  return new Promise((resolve) => {
    let session: Http2Session | undefined;
    const onSession = (s: Http2Session) => {
      session = s;
      s.on('error', () => {});
      s.once('close', () => {
        server.off('session', onSession);
        resolve();
      });
    };
    server.on('session', onSession);
    channel.once('close', () => {
      if (!session) {
        server.off('session', onSession);
        resolve();
      }
    });
    channel.on('error', () => channel.destroy());
    server.emit('connection', channel);
  });
}
