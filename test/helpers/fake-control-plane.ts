/**
 * A stand-in control plane for host-agent tests: it answers join and heartbeat from a desired
 * list the test edits, checks every request against the protocol's schemas, and records what
 * the agent reported. The control plane is outside the unit under test, so faking it is fine.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { type DesiredTenant, HeartbeatRequest, JoinRequest, WarrenError } from '@warren/protocol';

export class FakeControlPlane {
  readonly joinToken = `jt-${randomBytes(16).toString('hex')}`;
  readonly hostId = `host_${randomBytes(8).toString('hex')}`;
  readonly joins: JoinRequest[] = [];
  readonly reports: HeartbeatRequest[] = [];
  /** Requests that failed the protocol's schemas: a test expects none. */
  readonly invalid: string[] = [];
  tenants: DesiredTenant[] = [];
  /** Skill bundles it serves to the agent (GET /v1/agent/skills/:digest), by digest. */
  readonly bundles = new Map<string, Buffer>();
  /** The heartbeat token handed out by the last join; undefined refuses every heartbeat (401). */
  token: string | undefined;
  url = '';
  readonly #server: Server;

  private constructor(server: Server) {
    this.#server = server;
  }

  /** `host`: where it listens (a test/net lab's root address, for an agent in the lab's namespace). */
  static async start(host = '127.0.0.1'): Promise<FakeControlPlane> {
    const cp: FakeControlPlane = new FakeControlPlane(createServer((req, res) => void cp.#handle(req, res)));
    await new Promise<void>((resolve) => cp.#server.listen(0, host, resolve));
    cp.url = `http://${host}:${(cp.#server.address() as AddressInfo).port}`;
    return cp;
  }

  /** Sets one tenant's desired state (adding it to the list if new). */
  set(tenant: DesiredTenant): void {
    this.tenants = [...this.tenants.filter((t) => t.tenantId !== tenant.tenantId), tenant];
  }

  /** Waits until a heartbeat arriving from now on satisfies `check`; returns it. */
  async waitForReport(
    what: string,
    check: (r: HeartbeatRequest) => boolean,
    timeoutMs = 60_000,
  ): Promise<HeartbeatRequest> {
    const deadline = Date.now() + timeoutMs;
    let seen = this.reports.length;
    while (Date.now() < deadline) {
      for (; seen < this.reports.length; seen++) if (check(this.reports[seen]!)) return this.reports[seen]!;
      await sleep(25);
    }
    throw new Error(
      `no heartbeat within ${timeoutMs} ms where ${what}; last: ${JSON.stringify(this.reports.at(-1))}`,
    );
  }

  close(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let text = '';
    for await (const chunk of req) text += chunk;
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const unauthenticated = () => send(401, new WarrenError('UNAUTHENTICATED', 'bad token').toBody());
    const invalid = (what: string, message: string) => {
      this.invalid.push(`${what}: ${message}`);
      send(400, new WarrenError('INVALID_ARGUMENT', message).toBody());
    };
    if (req.method === 'POST' && req.url === '/v1/agent/join') {
      if (bearer !== this.joinToken) return unauthenticated();
      const parsed = JoinRequest.safeParse(JSON.parse(text));
      if (!parsed.success) return invalid('join', parsed.error.message);
      this.joins.push(parsed.data);
      this.token = `hb-${randomBytes(16).toString('hex')}`;
      return send(200, { hostId: this.hostId, token: this.token, heartbeatIntervalMs: 300 });
    }
    if (req.method === 'POST' && req.url === '/v1/agent/heartbeat') {
      if (!this.token || bearer !== this.token) return unauthenticated();
      const parsed = HeartbeatRequest.safeParse(JSON.parse(text));
      if (!parsed.success) return invalid('heartbeat', parsed.error.message);
      this.reports.push(parsed.data);
      return send(200, { tenants: this.tenants, heartbeatIntervalMs: 300 });
    }
    const bundle = /^\/v1\/agent\/skills\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? '');
    if (req.method === 'GET' && bundle) {
      if (!this.token || bearer !== this.token) return unauthenticated();
      const bytes = this.bundles.get(bundle[1]!);
      if (!bytes) return send(404, new WarrenError('NOT_FOUND', `no skill bundle ${bundle[1]}`).toBody());
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(bytes);
      return;
    }
    send(404, new WarrenError('NOT_FOUND', `no route ${req.method} ${req.url}`).toBody());
  }
}

/** A desired tenant with a fresh random id, sized for the shared test image. */
export function desiredTenant(
  imageId: string,
  desiredState: DesiredTenant['desiredState'],
  generation: number,
  hex = randomBytes(8).toString('hex'),
): DesiredTenant {
  return {
    tenantId: `ten_${hex}`,
    vmId: `ten-${hex}`,
    name: `t-${hex.slice(0, 8)}`,
    desiredState,
    imageId,
    vcpus: 1,
    memoryMiB: 512,
    diskMiB: 64,
    network: { egress: 'internet', allowlist: [], bandwidthMbit: null },
    dashboardPort: 8080,
    generation,
    idleTimeoutMs: null,
    secretsGeneration: 0,
    skills: [],
    config: null,
  };
}
