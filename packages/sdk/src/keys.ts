import { ApiKey, CreatedKey, CreateKeyRequest, parseOrThrow } from '@warren/protocol';
import { z } from 'zod';
import { type Http, path } from './http.ts';

const KeyList = z.object({ keys: z.array(ApiKey) });

/** Tenant-scoped API keys (admin token only). */
export class Keys {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /** The returned `token` is shown only this once; the API keeps only its hash. */
  async create(request: z.input<typeof CreateKeyRequest>): Promise<CreatedKey> {
    const json = parseOrThrow(CreateKeyRequest, request);
    return this.#http.json(CreatedKey, 'POST', '/v1/keys', { json });
  }

  /** All keys, or those of one tenant (id or name). */
  async list(tenant?: string): Promise<ApiKey[]> {
    return (await this.#http.json(KeyList, 'GET', '/v1/keys', { query: { tenant } })).keys;
  }

  async revoke(id: string): Promise<void> {
    const res = await this.#http.request('DELETE', path`/v1/keys/${id}`);
    await res.body?.cancel();
  }
}
