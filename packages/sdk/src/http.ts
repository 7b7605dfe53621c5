import { type ErrorCode, isErrorCode, parseOrThrow, WarrenError } from '@warren/protocol';
import type { z } from 'zod';

export interface HttpOptions {
  /** Base URL of the control plane, e.g. `http://127.0.0.1:7070` (a path prefix is kept). */
  url: string;
  token?: string | undefined;
  /** Replaces the global fetch (tests, proxies, instrumentation). */
  fetch?: typeof fetch;
  /** How errors name the server (`the Warren API at <url>` by default). */
  describe?: string;
}

export type Query = Record<string, string | number | boolean | undefined>;

export interface RequestOptions {
  query?: Query;
  /** Serialised as JSON. */
  json?: unknown;
  /** Sent as is (streamed when it is a stream). */
  body?: RequestInit['body'] | AsyncIterable<Uint8Array>;
  contentType?: string;
  signal?: AbortSignal | undefined;
  /** More request headers (e.g. `last-event-id`). */
  headers?: Record<string, string>;
  /** The `accept` header; JSON by default. */
  accept?: string;
}

/**
 * Builds a URL path from fixed parts and caller-supplied segments. Each segment is encoded as
 * one path segment, so a name like `a/../b` stays inside its collection. `.` and `..` are
 * refused outright: URL parsers collapse them (also as `%2e%2e`) before the request is sent.
 */
export function path(strings: TemplateStringsArray, ...segments: string[]): string {
  let out = strings[0]!;
  segments.forEach((segment, i) => {
    if (typeof segment !== 'string' || segment === '' || segment === '.' || segment === '..') {
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `${JSON.stringify(segment)} is not a valid id or name; use a tenant, host or key id or name`,
      );
    }
    out += encodeURIComponent(segment) + strings[i + 1]!;
  });
  return out;
}

/** What an HTTP status means when the body is not a Warren error (e.g. a proxy answered). */
function codeOfStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
      return 'INVALID_ARGUMENT';
    case 401:
      return 'UNAUTHENTICATED';
    case 403:
      return 'FORBIDDEN';
    case 404:
      return 'NOT_FOUND';
    case 409:
      return 'CONFLICT';
    case 413:
      return 'PAYLOAD_TOO_LARGE';
    case 429:
      return 'RATE_LIMITED';
    case 502:
    case 503:
    case 504:
      return 'API_UNREACHABLE';
    default:
      return 'INTERNAL';
  }
}

function isAbort(e: unknown): boolean {
  return (e as Error)?.name === 'AbortError' || (e as Error)?.name === 'TimeoutError';
}

/** The most specific reason node gives for a failed connection (ECONNREFUSED, ENOTFOUND, …). */
function describeCause(e: unknown): string {
  let cause = e as { cause?: unknown; code?: unknown; message?: unknown } | undefined;
  // undici wraps the socket error (sometimes twice) in `TypeError: fetch failed`.
  while (cause?.cause && typeof cause.cause === 'object') cause = cause.cause as typeof cause;
  const code = typeof cause?.code === 'string' ? cause.code : undefined;
  const message = typeof cause?.message === 'string' ? cause.message : String(e);
  return code && !message.includes(code) ? `${code}: ${message}` : message;
}

/** The transport every area of the SDK shares: auth, URLs, error mapping, validation. */
export class Http {
  readonly baseUrl: string;
  readonly #token: string | undefined;
  readonly #fetch: typeof fetch;
  readonly #describe: string;

  constructor(options: HttpOptions) {
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch {
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `the Warren API URL ${JSON.stringify(options.url)} is not a URL; use one like http://127.0.0.1:7070`,
      );
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new WarrenError('INVALID_ARGUMENT', `the Warren API URL must be http(s), got ${options.url}`);
    }
    this.baseUrl = parsed.href.replace(/\/+$/, '');
    this.#token = options.token;
    this.#fetch = options.fetch ?? globalThis.fetch;
    this.#describe = options.describe ?? `the Warren API at ${this.baseUrl}`;
  }

  url(path: string, query?: Query): URL {
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined) url.searchParams.set(k, String(v));
    }
    return url;
  }

  unreachable(e: unknown, during?: string): WarrenError {
    return new WarrenError(
      'API_UNREACHABLE',
      `cannot reach ${this.#describe}${during ? ` ${during}` : ''}: ${describeCause(e)}`,
      { cause: e },
    );
  }

  /** Sends a request and returns the response when it is 2xx; anything else throws. */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = {
      ...options.headers,
      accept: options.accept ?? 'application/json',
    };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    let body: RequestInit['body'];
    let streamed = false;
    if (options.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.json);
    } else if (options.body !== undefined) {
      headers['content-type'] = options.contentType ?? 'application/octet-stream';
      body = options.body as RequestInit['body'];
      streamed = !(options.body instanceof Uint8Array) && typeof options.body !== 'string';
    }
    let res: Response;
    try {
      res = await this.#fetch(this.url(path, options.query), {
        method,
        headers,
        body,
        signal: options.signal ?? null,
        // Node's fetch streams a request body only in half-duplex mode.
        ...(streamed ? { duplex: 'half' } : {}),
      } as RequestInit);
    } catch (e) {
      if (isAbort(e))
        throw new WarrenError('CONFLICT', `${method} ${path} cancelled by the caller`, { cause: e });
      if (e instanceof WarrenError) throw e;
      throw this.unreachable(e);
    }
    if (res.ok) return res;
    throw await this.#errorOf(res, method, path);
  }

  /** A request whose 2xx answer is JSON, validated with `schema`. */
  async json<S extends z.ZodType>(
    schema: S,
    method: string,
    path: string,
    options?: RequestOptions,
  ): Promise<z.output<S>> {
    const res = await this.request(method, path, options);
    let body: unknown;
    try {
      body = await res.json();
    } catch (e) {
      if (isAbort(e)) throw new WarrenError('CONFLICT', `${method} ${path} cancelled by the caller`);
      throw new WarrenError(
        'INTERNAL',
        `${method} ${path} answered ${res.status} with a body that is not JSON`,
        {
          cause: e,
        },
      );
    }
    try {
      return parseOrThrow(schema, body, 'INTERNAL');
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new WarrenError(
        'INTERNAL',
        `${method} ${path} answered an unexpected shape (${why}); is the CLI/SDK as new as the control plane?`,
      );
    }
  }

  async #errorOf(res: Response, method: string, path: string): Promise<WarrenError> {
    const text = await res.text().catch(() => '');
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    const e = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    if (e && typeof e.message === 'string') {
      if (isErrorCode(e.code)) return WarrenError.fromBody(body);
      // A code newer than this SDK: keep the server's words, classify by status.
      return new WarrenError(codeOfStatus(res.status), `${String(e.code)}: ${e.message.slice(0, 4096)}`);
    }
    const snippet = text.replace(/\s+/g, ' ').trim().slice(0, 200);
    return new WarrenError(
      codeOfStatus(res.status),
      `${method} ${path} answered HTTP ${res.status}${snippet ? `: ${snippet}` : ''} (not a Warren error; is ${this.baseUrl} the Warren API?)`,
      { details: { status: res.status } },
    );
  }
}
