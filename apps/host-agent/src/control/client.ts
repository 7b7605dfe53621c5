import {
  AgentSecrets,
  type ErrorBody,
  type HeartbeatRequest,
  HeartbeatResponse,
  isErrorCode,
  type JoinRequest,
  JoinResponse,
  WarrenError,
} from '@warren/protocol';
import type { z } from 'zod';

/** Replies bigger than this are not a control plane's; stops a confused peer from filling memory. */
const MAX_REPLY_BYTES = 64 * 1024 * 1024;

/**
 * The agent's side of the control plane's `/v1/agent` routes. A peer that cannot be reached
 * (refused, reset, timed out) is API_UNREACHABLE; an answered error keeps the control
 * plane's code; an answer that does not fit the contract is INTERNAL.
 */
export class ControlPlaneClient {
  readonly #base: string;
  readonly #timeoutMs: number;

  constructor(baseUrl: string, timeoutMs = 10_000) {
    this.#base = baseUrl.replace(/\/+$/, '');
    this.#timeoutMs = timeoutMs;
  }

  join(joinToken: string, request: JoinRequest): Promise<JoinResponse> {
    return this.#post('/v1/agent/join', joinToken, request, JoinResponse);
  }

  heartbeat(token: string, request: HeartbeatRequest): Promise<HeartbeatResponse> {
    return this.#post('/v1/agent/heartbeat', token, request, HeartbeatResponse);
  }

  /** The secrets of one tenant placed on this host (values in base64): only ever held in memory. */
  secrets(token: string, tenantId: string): Promise<AgentSecrets> {
    return this.#post('/v1/agent/secrets', token, { tenantId }, AgentSecrets);
  }

  /** A skill bundle's bytes (at most `maxBytes`); the caller verifies its digest. */
  async skillBundle(token: string, digest: string, maxBytes: number): Promise<Buffer> {
    const url = `${this.#base}/v1/agent/skills/${digest}`;
    let res: Response;
    try {
      res = await fetch(url, {
        headers: { authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(Math.max(this.#timeoutMs, 120_000)),
      });
    } catch (e) {
      throw new WarrenError('API_UNREACHABLE', `control plane ${url}: ${(e as Error).message}`, { cause: e });
    }
    if (!res.ok) {
      const json = await res.json().catch(() => undefined);
      if (isErrorCode((json as Partial<ErrorBody> | undefined)?.error?.code))
        throw WarrenError.fromBody(json);
      throw new WarrenError('INTERNAL', `control plane ${url} answered ${res.status}`);
    }
    const chunks: Buffer[] = [];
    let seen = 0;
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        seen += chunk.length;
        chunks.push(Buffer.from(chunk));
        // One byte more than the package's size is enough to know it is not the package: the
        // digest check refuses it (SKILL_INTEGRITY), and no more is read.
        if (seen > maxBytes) break;
      }
    } catch (e) {
      throw new WarrenError('API_UNREACHABLE', `control plane ${url}: ${(e as Error).message}`, { cause: e });
    }
    return Buffer.concat(chunks);
  }

  async #post<S extends z.ZodType>(
    path: string,
    token: string,
    body: unknown,
    schema: S,
  ): Promise<z.output<S>> {
    const url = this.#base + path;
    let res: Response;
    let text: string;
    try {
      res = await fetch(url, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
      if (Number(res.headers.get('content-length') ?? 0) > MAX_REPLY_BYTES)
        throw new Error(`reply over ${MAX_REPLY_BYTES} bytes`);
      text = await res.text();
    } catch (e) {
      const why =
        (e as Error).cause instanceof Error ? ((e as Error).cause as Error).message : (e as Error).message;
      throw new WarrenError('API_UNREACHABLE', `control plane ${url}: ${why}`, { cause: e });
    }
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      if (isErrorCode((json as Partial<ErrorBody> | undefined)?.error?.code))
        throw WarrenError.fromBody(json);
      const code = res.status === 401 ? 'UNAUTHENTICATED' : res.status === 403 ? 'FORBIDDEN' : 'INTERNAL';
      throw new WarrenError(code, `control plane ${url} answered ${res.status}`);
    }
    const r = schema.safeParse(json);
    if (r.success) return r.data;
    const issue = r.error.issues[0];
    throw new WarrenError(
      'INTERNAL',
      `control plane ${url} answered outside the contract: ${issue?.path.join('.') || 'body'}: ${issue?.message}`,
    );
  }
}
