import { parseOrThrow, SecretInfo, SecretList, SecretName, SetSecretRequest } from '@warren/protocol';
import { type Http, path } from './http.ts';

/**
 * A tenant's secrets (`/v1/tenants/{t}/secrets`): delivered into its guest as files at
 * `/run/warren/secrets/NAME`. Values go in and never come back: `list` gives names and versions.
 */
export class Secrets {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /** Sets a secret (text, or bytes sent as base64); returns its new version. */
  async set(tenant: string, name: string, value: string | Uint8Array): Promise<SecretInfo> {
    parseOrThrow(SecretName, name);
    const json = parseOrThrow(
      SetSecretRequest,
      typeof value === 'string'
        ? { value }
        : { value: Buffer.from(value).toString('base64'), encoding: 'base64' as const },
    );
    return this.#http.json(SecretInfo, 'PUT', path`/v1/tenants/${tenant}/secrets/${name}`, { json });
  }

  async list(tenant: string): Promise<SecretInfo[]> {
    return (await this.#http.json(SecretList, 'GET', path`/v1/tenants/${tenant}/secrets`)).secrets;
  }

  async remove(tenant: string, name: string): Promise<void> {
    parseOrThrow(SecretName, name);
    const res = await this.#http.request('DELETE', path`/v1/tenants/${tenant}/secrets/${name}`);
    await res.body?.cancel();
  }
}
