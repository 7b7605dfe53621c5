import {
  Agent as HttpAgent,
  request as httpRequest,
  type IncomingMessage,
  type OutgoingHttpHeaders,
} from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PROXY_UPSTREAM_HEADER, WarrenError } from '@warren/protocol';
import { requestContext } from '../request-context.ts';
import type { HostsTable } from '../store/database.ts';

type HostRef = Pick<HostsTable, 'name' | 'address' | 'agent_token'>;

/** Pairs to a header object; repeated names become arrays, which Node sends as repeated lines. */
export function toHeaderObject(pairs: [string, string][]): OutgoingHttpHeaders {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of pairs) {
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}

export type Exchange =
  | { kind: 'response'; res: IncomingMessage }
  | { kind: 'upgrade'; res: IncomingMessage; socket: Socket; head: Buffer };

export interface ForwardInit {
  method: string;
  /** The agent's proxy path (`vmProxyPath`), with the query. */
  path: string;
  headers: OutgoingHttpHeaders;
  /** Streamed to the agent; counted against `bodyLimit`. */
  body?: Readable;
  bodyLimit: number;
  /** How long to wait without progress before the answer; the proxy's own timeout when absent. */
  timeoutMs?: number;
  /** Called when the caller goes away before the answer: aborts the exchange. */
  onAbort: (abort: () => void) => void;
}

/**
 * The control plane's half of the dashboard proxy: one HTTP exchange (or WebSocket handshake)
 * with a host agent's `/v1/vms/:id/proxy/:port/*`, authenticated with the agent token. It
 * resolves once the agent answers; errors before that are Warren errors, so the route can
 * answer them in the usual format. Bodies stream both ways and are never buffered.
 */
export class DashboardProxy {
  readonly #timeoutMs: number;
  readonly #wsIdleMs: number;
  readonly #responseIdleMs: number;
  // Keep-alive pools: one TCP (or TLS) handshake per agent, not per dashboard request.
  readonly #http = new HttpAgent({ keepAlive: true });
  readonly #https = new HttpsAgent({ keepAlive: true });
  /** Open WebSocket tunnels and streaming responses, ended when the control plane closes. */
  readonly #live = new Set<{ destroy(): unknown }>();

  /** Bytes through the proxy (metrics): `in` from clients to VMs, `out` from VMs to clients. */
  readonly #onBytes: (direction: 'in' | 'out', n: number) => void;

  constructor(options: {
    timeoutMs: number;
    wsIdleMs: number;
    responseIdleMs: number;
    onBytes?: (direction: 'in' | 'out', n: number) => void;
  }) {
    this.#onBytes = options.onBytes ?? (() => {});
    this.#timeoutMs = options.timeoutMs;
    this.#wsIdleMs = options.wsIdleMs;
    this.#responseIdleMs = options.responseIdleMs;
  }

  forward(host: HostRef, init: ForwardInit): Promise<Exchange> {
    const base = new URL(host.address);
    const tls = base.protocol === 'https:';
    return new Promise<Exchange>((resolve, reject) => {
      let failure: WarrenError | undefined;
      let answered = false;
      // Only until the agent answers: from then on the caller streams and handles the ends.
      const fail = (e: WarrenError) => {
        if (answered) return;
        failure ??= e;
        reject(failure);
        req.destroy();
      };
      const req = (tls ? httpsRequest : httpRequest)({
        protocol: base.protocol,
        hostname: base.hostname.replace(/^\[|\]$/g, ''),
        port: base.port || (tls ? 443 : 80),
        method: init.method,
        path: init.path,
        headers: {
          ...init.headers,
          authorization: `Bearer ${host.agent_token}`,
          ...(requestContext.getStore() ? { 'x-request-id': requestContext.getStore()!.requestId } : {}),
        },
        agent: tls ? this.#https : this.#http,
      });
      // Inactivity, not total time: connecting, a stalled upload and waiting for the answer
      // each count, but a large upload that keeps moving is not cut off.
      const timeoutMs = init.timeoutMs ?? this.#timeoutMs;
      req.setTimeout(timeoutMs, () =>
        fail(
          new WarrenError(
            'DASHBOARD_UNAVAILABLE',
            `the tenant's dashboard did not answer within ${timeoutMs} ms (WARREN_DASHBOARD_TIMEOUT_MS, plus WARREN_WAKE_TIMEOUT_MS while it wakes)`,
          ),
        ),
      );
      init.onAbort(() => fail(new WarrenError('CONFLICT', 'the client went away')));
      req.on('error', (e) => {
        reject(
          failure ??
            new WarrenError('HOST_UNAVAILABLE', `host ${host.name} does not answer: ${e.message}`, {
              cause: e,
            }),
        );
      });
      req.on('response', (res) => {
        answered = true;
        req.setTimeout(0);
        resolve({ kind: 'response', res });
      });
      req.on('upgrade', (res, socket, head) => {
        answered = true;
        req.setTimeout(0);
        resolve({ kind: 'upgrade', res, socket, head });
      });
      const body = init.body;
      if (!body) {
        req.end();
        return;
      }
      let seen = 0;
      const onData = (chunk: Buffer) => {
        seen += chunk.length;
        this.#onBytes('in', chunk.length);
        if (seen > init.bodyLimit) {
          body.off('data', onData);
          // Read and drop the rest, so the 413 can be answered on this connection.
          body.resume();
          fail(
            new WarrenError(
              'PAYLOAD_TOO_LARGE',
              `dashboard request bodies are limited to ${init.bodyLimit} bytes (WARREN_DASHBOARD_BODY_LIMIT_BYTES)`,
            ),
          );
        } else if (!req.write(chunk)) body.pause();
      };
      body.on('data', onData);
      body.on('error', () => fail(new WarrenError('INVALID_ARGUMENT', 'the request body was cut off')));
      req.on('drain', () => body.resume());
      body.on('end', () => {
        if (!failure) req.end();
      });
    });
  }

  /**
   * Relays a 101 to the client and then pipes the two sockets: WebSocket frames pass as raw
   * bytes, untouched. Either side closing, erroring or staying silent for the idle time
   * (WARREN_DASHBOARD_WS_IDLE_MS) closes both.
   */
  tunnel(
    client: Socket,
    clientHead: Buffer,
    up: Extract<Exchange, { kind: 'upgrade' }>,
    headers: [string, string][],
  ) {
    const { socket: upstream, head } = up;
    const lines = ['HTTP/1.1 101 Switching Protocols', ...headers.map(([k, v]) => `${k}: ${v}`)];
    client.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (head.length > 0) client.write(head);
    if (clientHead.length > 0) upstream.write(clientHead);
    const entry = {
      destroy: () => {
        client.destroy();
        upstream.destroy();
        this.#live.delete(entry);
      },
    };
    this.#live.add(entry);
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      s.setTimeout(this.#wsIdleMs, entry.destroy);
      s.on('error', entry.destroy);
      s.on('close', entry.destroy);
    }
    // WebSocket has no half-close (closing is a frame): a client that ended its side is gone,
    // and a VM that never closes back must not keep the tunnel (and the tenant's stream) open.
    client.on('end', entry.destroy);
    client.on('data', (b: Buffer) => this.#onBytes('in', b.length));
    upstream.on('data', (b: Buffer) => this.#onBytes('out', b.length));
    upstream.pipe(client);
    client.pipe(upstream);
  }

  /**
   * Streams the VM's response body to the client, with backpressure. When nothing moves for
   * WARREN_DASHBOARD_RESPONSE_IDLE_MS (the VM stalls mid-answer, or the client stops reading),
   * both ends are cut: a stalled body would otherwise hold a connection to the agent, and the
   * client's, forever. Closing the control plane ends it too.
   */
  async stream(res: IncomingMessage, client: Writable): Promise<void> {
    const entry = {
      destroy: () => {
        res.destroy();
        client.destroy();
      },
    };
    this.#live.add(entry);
    const timer = setTimeout(entry.destroy, this.#responseIdleMs);
    const touch = () => timer.refresh();
    res.on('data', (b: Buffer) => {
      touch();
      this.#onBytes('out', b.length);
    });
    client.on('drain', touch);
    try {
      await pipeline(res, client);
    } catch {
      entry.destroy();
    } finally {
      clearTimeout(timer);
      this.#live.delete(entry);
    }
  }

  close(): void {
    for (const s of [...this.#live]) s.destroy();
    this.#http.destroy();
    this.#https.destroy();
  }

  /** The agent's own answer (no PROXY_UPSTREAM_HEADER): read its error, at most 64 KiB. */
  static isAgentAnswer(res: IncomingMessage): boolean {
    return res.headers[PROXY_UPSTREAM_HEADER] === undefined;
  }

  static async agentError(host: HostRef, tenantName: string, res: IncomingMessage): Promise<WarrenError> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of res as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > 64 * 1024) break;
      chunks.push(c);
    }
    res.destroy();
    let body: unknown;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      body = undefined;
    }
    const status = res.statusCode ?? 502;
    const e = WarrenError.fromBody(body, status >= 500 ? 'HOST_UNAVAILABLE' : 'INVALID_ARGUMENT');
    switch (e.code) {
      // The agent refusing our token is the platform's problem, not the caller's.
      case 'UNAUTHENTICATED':
      case 'FORBIDDEN':
        return new WarrenError(
          'HOST_UNAVAILABLE',
          `host ${host.name} refused the control plane's credentials`,
        );
      case 'NOT_FOUND':
        return new WarrenError(
          'HOST_UNAVAILABLE',
          `host ${host.name} has no dashboard proxy (${e.message}); upgrade its host agent`,
        );
      case 'VM_NOT_FOUND':
      case 'VM_NOT_RUNNING':
      case 'GUEST_UNAVAILABLE':
        return new WarrenError('DASHBOARD_UNAVAILABLE', `tenant ${tenantName}: ${e.message}`);
      default:
        return e;
    }
  }
}
