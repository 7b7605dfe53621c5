import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { createRemoteApi, type Host } from '@warren/host-agent';
import { WarrenError } from '@warren/protocol';
import type { FastifyInstance } from 'fastify';
import { FakeAgent } from './api.ts';

/**
 * The host agent's real remote API with the control-plane side of an agent (join, heartbeat,
 * "converged at once" like FakeAgent); its VmManager is a stand-in that only answers `get`
 * with a state and a guest IP, which is all the dashboard proxy asks of it.
 */
export class ProxyAgent {
  readonly agentToken = randomBytes(32).toString('base64url');
  api!: FastifyInstance;
  address = '';
  /** Joins and heartbeats on behalf of `api`. */
  readonly host = new FakeAgent('proxy-host', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 });
  /** Tenant name → the VM's guest IP (undefined: the VM has no network). */
  readonly guestIps = new Map<string, string | undefined>();
  readonly asked: string[] = [];

  get hostToken(): string {
    return this.host.token;
  }

  async start(cpUrl: string, joinToken: string): Promise<this> {
    const vms = {
      get: async (id: string) => {
        this.asked.push(id);
        const d = this.host.desired.find((x) => x.vmId === id);
        if (!d) throw new WarrenError('VM_NOT_FOUND', `no VM ${id} on this host`);
        const ip = this.guestIps.get(d.name);
        return {
          id,
          state: d.desiredState === 'running' ? 'running' : 'stopped',
          ...(ip ? { network: { guestIp: ip } } : {}),
        };
      },
      // Dashboard traffic marks a VM used (VmManager.touch); nothing to track here.
      touch: () => {},
      // Open requests keep a VM from idling (VmManager.idle); no idle reclamation here.
      idle: { hold: () => () => {} },
    };
    this.api = createRemoteApi({ vms } as unknown as Host, { agentToken: this.agentToken, onWake: () => {} });
    await this.api.listen({ host: '127.0.0.1', port: 0 });
    this.address = `http://127.0.0.1:${(this.api.server.address() as AddressInfo).port}`;
    await this.host.start(cpUrl, joinToken, 1000, { address: this.address, agentToken: this.agentToken });
    return this;
  }

  heartbeat(): Promise<unknown> {
    return this.host.heartbeat();
  }

  async stop(): Promise<void> {
    await this.host.stop();
    await this.api?.close();
  }
}
