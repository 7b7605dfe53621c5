import { CreatedJoinToken, CreateJoinTokenRequest, JoinToken, parseOrThrow } from '@warren/protocol';
import { z } from 'zod';
import { type Http, path } from './http.ts';

const JoinTokenList = z.object({ joinTokens: z.array(JoinToken) });

/** Tokens host agents join with (admin token only): rotate them, or make single-use ones. */
export class JoinTokens {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /** The returned `token` is shown only this once; `singleUse` tokens are consumed by one join. */
  async create(request: CreateJoinTokenRequest = {}): Promise<CreatedJoinToken> {
    const json = parseOrThrow(CreateJoinTokenRequest, request);
    return this.#http.json(CreatedJoinToken, 'POST', '/v1/join-tokens', { json });
  }

  async list(): Promise<JoinToken[]> {
    return (await this.#http.json(JoinTokenList, 'GET', '/v1/join-tokens')).joinTokens;
  }

  async revoke(id: string): Promise<void> {
    const res = await this.#http.request('DELETE', path`/v1/join-tokens/${id}`);
    await res.body?.cancel();
  }
}
