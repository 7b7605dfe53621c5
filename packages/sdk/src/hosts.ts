import { CreatedJoinToken, Host, Tenant } from '@warren/protocol';
import { z } from 'zod';
import { type Http, path } from './http.ts';

const HostList = z.object({ hosts: z.array(Host) });
const Removed = z.object({ host: z.string(), lostTenants: z.array(z.string()) });

/** The machines that run tenant VMs (admin token only). */
export class Hosts {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  async list(): Promise<Host[]> {
    return (await this.#http.json(HostList, 'GET', '/v1/hosts')).hosts;
  }

  /** `ref` is a host id (host_…) or name. */
  async get(ref: string): Promise<Host> {
    return this.#http.json(Host, 'GET', path`/v1/hosts/${ref}`);
  }

  /** A draining host gets no new tenants; its tenants keep running. `false` undoes it. */
  async drain(ref: string, draining = true): Promise<Host> {
    return this.#http.json(Host, 'POST', path`/v1/hosts/${ref}/drain`, { json: { draining } });
  }

  /**
   * Removes a host that is gone for good: its tenants become `lost` (restore them from a
   * backup onto another host). Refused while the host heartbeats, unless `force`.
   */
  async remove(ref: string, options: { force?: boolean } = {}): Promise<z.infer<typeof Removed>> {
    return this.#http.json(Removed, 'DELETE', path`/v1/hosts/${ref}`, {
      ...(options.force ? { query: { force: 'true' } } : {}),
    });
  }

  /**
   * Adopts a VM the host keeps in quarantine (listed in `get(ref).quarantined`) as tenant
   * `name`, with the VM's own tenant id, size and image; it starts out stopped.
   */
  async adopt(ref: string, vmId: string, name: string): Promise<Tenant> {
    return this.#http.json(Tenant, 'POST', path`/v1/hosts/${ref}/quarantine/${vmId}/adopt`, {
      json: { name },
    });
  }

  /**
   * A single-use join token with which this host's agent may join again under its name (it
   * lost its credentials, or a new machine replaces it); shown only this once.
   */
  async rejoin(ref: string): Promise<CreatedJoinToken> {
    return this.#http.json(CreatedJoinToken, 'POST', path`/v1/hosts/${ref}/rejoin`);
  }
}
