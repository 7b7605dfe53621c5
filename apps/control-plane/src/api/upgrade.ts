import { type IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { FastifyInstance } from 'fastify';

export interface PendingUpgrade {
  socket: Socket;
  head: Buffer;
}

const pending = new WeakMap<IncomingMessage, PendingUpgrade>();

/**
 * Sends HTTP upgrade requests (WebSocket handshakes) through the ordinary Fastify router, so
 * they pass the very same route handler, authentication, scope check and error format as any
 * other request. The route's answer is written to the connection; a route that takes the
 * upgrade (`takeUpgrade`) hijacks the reply and owns the socket from then on. Anything else
 * (an error, a route that ignores upgrades) ends the connection after its response.
 */
export function routeUpgrades(app: FastifyInstance): void {
  // Only WebSocket handshakes take the upgrade path; any other Upgrade header (h2c from curl
  // --http2, say) stays an ordinary request with its body. The property is Node's (24.9+).
  (app.server as { shouldUpgradeCallback?: (req: IncomingMessage) => boolean }).shouldUpgradeCallback =
    isWebSocketHandshake;
  app.server.on('upgrade', (req: IncomingMessage, duplex: Duplex, head: Buffer) => {
    const socket = duplex as Socket;
    socket.on('error', () => socket.destroy());
    pending.set(req, { socket, head });
    const res = new ServerResponse(req);
    res.assignSocket(socket);
    res.shouldKeepAlive = false;
    res.on('finish', () => socket.end());
    app.routing(req, res);
  });
}

/** The socket of a WebSocket handshake, once: undefined for ordinary requests. */
export function takeUpgrade(req: IncomingMessage): PendingUpgrade | undefined {
  const u = pending.get(req);
  pending.delete(req);
  if (!u || !isWebSocketHandshake(req)) return undefined;
  return u;
}

function isWebSocketHandshake(req: IncomingMessage): boolean {
  return req.method === 'GET' && /^websocket$/i.test(req.headers.upgrade ?? '');
}
