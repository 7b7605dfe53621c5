import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';

/**
 * node:http and node:https as CommonJS modules: an ESM `import` of node:http builds a facade
 * that reads every export, among them the lazy WebSocket getters, which load undici, the very
 * cost this transport exists to avoid. https is loaded only for an https URL.
 */
const http = () => process.getBuiltinModule('node:http');
const https = () => process.getBuiltinModule('node:https');

export interface NodeFetchOptions {
  /** Sends every request to this unix socket instead of the URL's host and port. */
  socketPath?: string;
  /** Rewords a connection error (ENOENT, EACCES, ...) into what the caller should do about it. */
  explainConnectError?: (e: NodeJS.ErrnoException) => string;
}

/** The part of a fetch Response that the SDK reads. */
class NodeResponse {
  readonly status: number;
  readonly ok: boolean;
  readonly statusText: string;
  readonly headers: { get(name: string): string | null };
  readonly body: ReadableStream<Uint8Array> | null;

  constructor(res: IncomingMessage, empty: boolean) {
    this.status = res.statusCode ?? 500;
    this.ok = this.status >= 200 && this.status < 300;
    this.statusText = res.statusMessage ?? '';
    const raw = res.headers;
    this.headers = {
      get: (name) => {
        const v = raw[name.toLowerCase()];
        return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
      },
    };
    if (empty) res.resume();
    this.body = empty ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>);
  }

  async text(): Promise<string> {
    if (!this.body) return '';
    const chunks: Uint8Array[] = [];
    for await (const chunk of this.body) chunks.push(chunk);
    return Buffer.concat(chunks).toString('utf8');
  }

  async json(): Promise<unknown> {
    return JSON.parse(await this.text());
  }
}

/**
 * A `fetch` over node:http(s), for programs that start often and make a request or two (the
 * CLI): node's global fetch loads undici on first use, a third of a CLI's start-up, and cannot
 * reach a unix socket. It does what `Http` needs: method, headers, a string, byte or streamed
 * body, an abort signal; the answer's status, headers, body stream, `text()` and `json()`.
 */
export function nodeFetch(options: NodeFetchOptions = {}): typeof fetch {
  const aborted = () => Object.assign(new Error('the request was aborted'), { name: 'AbortError' });
  return ((input: string | URL | Request, init: RequestInit = {}) =>
    new Promise<NodeResponse>((resolve, reject) => {
      const url = new URL(String(input));
      const signal = init.signal ?? undefined;
      if (signal?.aborted) return reject(aborted());
      const method = init.method ?? 'GET';
      const send = url.protocol === 'https:' && !options.socketPath ? https().request : http().request;
      const req = send(
        url,
        {
          method,
          headers: init.headers as Record<string, string>,
          ...(options.socketPath ? { socketPath: options.socketPath } : {}),
        },
        (res) => {
          const status = res.statusCode ?? 500;
          const response = new NodeResponse(res, status === 204 || status === 304 || method === 'HEAD');
          // An abort after the headers ends the body stream with the same AbortError.
          const onAbort = () => res.destroy(aborted());
          signal?.addEventListener('abort', onAbort, { once: true });
          res.once('close', () => signal?.removeEventListener('abort', onAbort));
          resolve(response);
        },
      );
      const onAbort = () => req.destroy(aborted());
      signal?.addEventListener('abort', onAbort, { once: true });
      req.once('response', () => signal?.removeEventListener('abort', onAbort));
      req.once('error', (e: NodeJS.ErrnoException) => {
        signal?.removeEventListener('abort', onAbort);
        if (e.name === 'AbortError' || !options.explainConnectError) return reject(e);
        // No `cause`: Http reports the deepest cause, and this message is the one that says what to do.
        reject(Object.assign(new Error(options.explainConnectError(e)), { code: e.code }));
      });
      const body = init.body as unknown;
      if (body === undefined || body === null) req.end();
      else if (typeof body === 'string' || body instanceof Uint8Array) req.end(body);
      else {
        const stream = Readable.from(body as AsyncIterable<Uint8Array>);
        stream.once('error', (e) => req.destroy(e));
        stream.pipe(req);
      }
    })) as unknown as typeof fetch;
}
