/**
 * Dashboard proxy: requests/s, latency p50/p99 and MB/s of one upstream server (standing in
 * for a tenant VM's dashboard, on 127.0.0.2) reached four ways in the same run:
 *
 *   1. direct (the floor);
 *   2. nginx as a plain reverse proxy to the same upstream (keep-alive to it, WebSocket
 *      headers, access log off), N worker processes (default 1);
 *   3. the host agent's remote API alone (`/v1/vms/:id/proxy/:port/*`, agent token): one hop;
 *   4. Warren's whole chain: control plane `/t/<tenant>/dashboard/*` with a tenant key → host
 *      agent → upstream.
 *
 * Two responses: 1 KiB (a page's API call) and 1 MiB (throughput). Median of R runs (default
 * 3) of D seconds (default 5) with C connections (default 10), all targets interleaved; the
 * 1 KiB one driven by autocannon, the 1 MiB one by a node:http client (`clientThread`: it
 * explains why), each in a worker thread. Then a WebSocket echo round trip (64-byte text
 * messages, one at a time) through the same four paths.
 *
 *   npm run bench:dashboard -- [--connections 10] [--duration 5] [--runs 3] [--ws-messages 2000]
 *     [--sizes small,large] [--large-client node|autocannon] [--nginx-workers 1] [--nginx nginx]
 *     [--upstream-host 127.0.0.2]
 *
 * The control plane, the host agent and the upstream each run in their own worker thread of
 * this process (in production they are separate processes, the VM another machine), so no two
 * share an event loop; each thread's CPU time is read around every run, which splits the cost
 * of a request between the hops. nginx runs as a child process in the foreground on a
 * temporary prefix; without an nginx binary its rows are skipped.
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { Agent, createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { createRemoteApi, type Host } from '@warren/host-agent';
import { vmIdOfTenant, WarrenError } from '@warren/protocol';
import autocannon, { type Result } from 'autocannon';
import { call, FAKE_IMAGE, FakeAgent, openTestControlPlane } from '../test/helpers/api.ts';
import { freePort } from '../test/helpers/free-port.ts';
import { acceptWebSocketEcho } from '../test/helpers/ws-echo.ts';
import { median, positiveInt } from './common.ts';

/* ------------------------------------------------------------------------- the responses */

/** 1 KiB of JSON, like a dashboard page's API call. */
const SMALL = Buffer.from(`{"ok":true,"pad":"${'x'.repeat(1004)}"}`);
/** 1 MiB of incompressible-looking bytes (no proxy here compresses anyway). */
const LARGE = Buffer.alloc(1024 * 1024);
for (let i = 0; i < LARGE.length; i++) LARGE[i] = (i * 131 + (i >>> 11)) & 0xff;
const WS_MESSAGE = 'm'.repeat(64);

/* ------------------------------------------------------------------------ worker threads */

type Role =
  | { role: 'upstream'; host: string }
  | { role: 'agent'; agentToken: string; guestIp: string }
  | { role: 'cp'; dataDir: string }
  | { role: 'client' };
type ToWorker =
  | { type: 'cpu' }
  | { type: 'vm'; id: string }
  | { type: 'stop' }
  | { type: 'load'; load: Load };
/** One run of the node:http load generator. */
interface Load {
  url: string;
  headers: Record<string, string>;
  connections: number;
  seconds: number;
  /** The body length every answer must have. */
  bytes: number;
}
interface LoadResult {
  rps: number;
  /** Latency percentiles and mean, ms (not rounded). */
  p50: number;
  p99: number;
  mean: number;
  errors: number;
  non2xx: number;
}
interface CpuReply {
  /** user + system CPU time of the thread, µs. */
  cpu: number;
  /** Requests the upstream answered (HTTP, not WebSocket); 0 for the others. */
  served: number;
}

const threadCpu = () => {
  const u = process.threadCpuUsage();
  return u.user + u.system;
};

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** The stand-in for the VM's dashboard: /small, /large, and a WebSocket echo on any path. */
async function upstreamThread(host: string): Promise<void> {
  let served = 0;
  const server = createServer((req, res) => {
    served++;
    const body = req.url === '/small' ? SMALL : req.url === '/large' ? LARGE : undefined;
    if (!body) return void res.writeHead(404, { 'content-length': 0 }).end();
    res.writeHead(200, {
      'content-type': req.url === '/small' ? 'application/json' : 'application/octet-stream',
      'content-length': body.length,
    });
    res.end(body);
  });
  // Longer than nginx's upstream keep-alive (60 s), so nginx never reuses a connection this
  // side is closing between runs.
  server.keepAliveTimeout = 65_000;
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    acceptWebSocketEcho(req, socket, head);
  });
  await listen(server, host, 0);
  serve(
    { port: (server.address() as AddressInfo).port },
    () => served,
    async () => {
      server.closeAllConnections();
      server.close();
    },
  );
}

/**
 * The host agent's real remote API (proxy route, agent-token check, the production
 * `guestIpTarget`); its VmManager is a stand-in that answers `get` with a running VM whose
 * guest IP is the upstream's loopback address, which is all the dashboard proxy asks of it.
 */
async function agentThread(agentToken: string, guestIp: string): Promise<void> {
  const known = new Set<string>();
  const vms = {
    get: async (id: string) => {
      if (!known.has(id)) throw new WarrenError('VM_NOT_FOUND', `no VM ${id} on this host`);
      return { id, state: 'running', network: { guestIp } };
    },
  };
  const api = createRemoteApi({ vms } as unknown as Host, { agentToken, onWake: () => {} });
  await api.listen({ host: '127.0.0.1', port: 0 });
  serve(
    { url: `http://127.0.0.1:${(api.server.address() as AddressInfo).port}` },
    () => 0,
    () => api.close(),
    (id) => known.add(id),
  );
}

/** A real control plane on a temporary data directory (SQLite on disk, as in bench/api.ts). */
async function controlPlaneThread(dataDir: string): Promise<void> {
  // Hosts stay healthy without periodic heartbeats, which would load the server under test.
  const cp = await openTestControlPlane({ heartbeatTimeoutMs: 3_600_000 }, dataDir);
  serve(
    { url: cp.url, adminToken: cp.adminToken, joinToken: cp.joinToken },
    () => 0,
    () => cp.close(true),
  );
}

/**
 * A load generator for the large response: autocannon parses responses in JavaScript
 * (http-parser-js) and tops out at about 150 MiB/s of 1 MiB bodies on one core here, so it
 * would measure itself. This one uses node:http (llhttp): C keep-alive connections, each
 * sending its next request when the previous response has been read whole, for D seconds.
 */
async function clientThread(): Promise<void> {
  const run = async (load: Load): Promise<LoadResult> => {
    const url = new URL(load.url);
    const agent = new Agent({ keepAlive: true, maxSockets: load.connections });
    const latencies: number[] = [];
    let errors = 0;
    let non2xx = 0;
    const one = (): Promise<void> =>
      new Promise((resolve) => {
        const t0 = performance.now();
        const req = httpRequest(
          { host: url.hostname, port: url.port, path: url.pathname, headers: load.headers, agent },
          (res) => {
            let bytes = 0;
            res.on('data', (c: Buffer) => (bytes += c.length));
            res.on('end', () => {
              if (res.statusCode !== 200) non2xx++;
              else if (bytes !== load.bytes) errors++;
              else latencies.push(performance.now() - t0);
              resolve();
            });
            res.on('error', () => {
              errors++;
              resolve();
            });
          },
        );
        req.on('error', () => {
          errors++;
          resolve();
        });
        req.end();
      });
    const start = performance.now();
    const end = start + load.seconds * 1000;
    await Promise.all(
      Array.from({ length: load.connections }, async () => {
        while (performance.now() < end) await one();
      }),
    );
    const elapsed = (performance.now() - start) / 1000;
    agent.destroy();
    const sorted = latencies.sort((a, b) => a - b);
    const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
    return {
      rps: latencies.length / elapsed,
      p50: at(0.5),
      p99: at(0.99),
      mean: latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length),
      errors,
      non2xx,
    };
  };
  const port = parentPort!;
  port.on('message', (m: ToWorker) => {
    if (m.type === 'load') void run(m.load).then((r) => port.postMessage(r));
    else if (m.type === 'stop') process.exit(0);
  });
  port.postMessage({ ready: {} });
}

/** Answers the main thread: CPU samples, VM registrations, stop. */
function serve(
  ready: Record<string, unknown>,
  served: () => number,
  stop: () => Promise<unknown>,
  onVm?: (id: string) => void,
): void {
  const port = parentPort!;
  port.on('message', (m: ToWorker) => {
    if (m.type === 'cpu') port.postMessage({ cpu: threadCpu(), served: served() } satisfies CpuReply);
    else if (m.type === 'vm') {
      onVm?.(m.id);
      port.postMessage({ ok: true });
    } else void stop().finally(() => process.exit(0));
  });
  port.postMessage({ ready });
}

/** One worker thread running this file in a role; requests and answers, one at a time. */
class Thread {
  readonly #worker: Worker;
  #exited = false;
  constructor(data: Role) {
    this.#worker = new Worker(new URL(import.meta.url), { workerData: data });
    this.#worker.once('exit', () => (this.#exited = true));
  }

  ready<T>(): Promise<T> {
    return new Promise((resolve, reject) => {
      this.#worker.once('message', (m: { ready: T }) => resolve(m.ready));
      this.#worker.once('error', reject);
      this.#worker.once('exit', (code) => reject(new Error(`worker exited (${code}) before it was ready`)));
    });
  }

  ask<T>(m: ToWorker): Promise<T> {
    return new Promise((resolve) => {
      this.#worker.once('message', resolve);
      this.#worker.postMessage(m);
    });
  }

  async stop(): Promise<void> {
    if (this.#exited) return;
    const exited = new Promise((r) => this.#worker.once('exit', r));
    this.#worker.postMessage({ type: 'stop' } satisfies ToWorker);
    const timeout = sleep(5000).then(() => 'timeout');
    if ((await Promise.race([exited, timeout])) === 'timeout') await this.#worker.terminate();
  }
}

/* --------------------------------------------------------------------------------- nginx */

function findNginx(bin: string): string | undefined {
  for (const candidate of bin.includes('/') ? [bin] : [bin, `/usr/sbin/${bin}`, `/usr/local/sbin/${bin}`]) {
    const r = spawnSync(candidate, ['-v'], { encoding: 'utf8' });
    if (!r.error && r.status === 0) return candidate;
  }
  return undefined;
}

function nginxConf(dir: string, workers: number, port: number, upstream: string): string {
  return `worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # Node's servers in Warren's chain do not limit requests per connection; nginx's default
  # (1000) would close every client and upstream connection that often.
  keepalive_requests 1000000;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream dashboard {
    server ${upstream};
    keepalive 32;
    keepalive_requests 1000000;
  }
  map $http_upgrade $connection_upgrade {
    default upgrade;
    '' '';
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://dashboard;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }
  }
}
`;
}

/** The `/proc/<pid>/stat` fields after the command name (field 3, the state, is index 0). */
async function statFields(pid: number): Promise<string[] | undefined> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return text?.slice(text.lastIndexOf(')') + 2).split(' ');
}

async function childrenOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const f = await statFields(Number(name));
    if (f && Number(f[1]) === pid) out.push(Number(name));
  }
  return out;
}

/** user + system CPU time of these processes, µs (the kernel counts in 1/100 s ticks). */
async function processCpu(pids: number[]): Promise<number> {
  let ticks = 0;
  for (const pid of pids) {
    const f = await statFields(pid);
    if (f) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks * 10_000;
}

async function waitForPort(port: number, child: ChildProcess, why: () => Promise<string>): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nginx exited: ${await why()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nginx does not listen on ${port}: ${await why()}`);
    await sleep(20);
  }
}

/* ---------------------------------------------------------------------------- main thread */

if (!isMainThread) {
  const data = workerData as Role;
  if (data.role === 'upstream') await upstreamThread(data.host);
  else if (data.role === 'agent') await agentThread(data.agentToken, data.guestIp);
  else if (data.role === 'cp') await controlPlaneThread(data.dataDir);
  else await clientThread();
} else {
  await main();
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      connections: { type: 'string', default: '10' },
      duration: { type: 'string', default: '5' },
      runs: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '1' },
      'ws-messages': { type: 'string', default: '2000' },
      'nginx-workers': { type: 'string', default: '1' },
      nginx: { type: 'string', default: 'nginx' },
      'upstream-host': { type: 'string', default: '127.0.0.2' },
      'large-client': { type: 'string', default: 'node' },
      sizes: { type: 'string', default: 'small,large' },
    },
  });
  const int = (name: 'connections' | 'duration' | 'runs' | 'warmup' | 'ws-messages' | 'nginx-workers') =>
    positiveInt(values, name);
  const connections = int('connections');
  const duration = int('duration');
  const runs = int('runs');
  const warmup = int('warmup');
  const wsMessages = int('ws-messages');
  const nginxWorkers = int('nginx-workers');
  const upstreamHost = values['upstream-host']!;
  const largeClient = values['large-client'];
  if (largeClient !== 'node' && largeClient !== 'autocannon') {
    throw new Error(`--large-client: node or autocannon, got ${largeClient}`);
  }
  const quantile = (sorted: number[], q: number) =>
    sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;

  const nginxBin = findNginx(values.nginx!);
  const nginxVersion = nginxBin
    ? spawnSync(nginxBin, ['-v'], { encoding: 'utf8' })
        .stderr.trim()
        .replace(/^nginx version: /, '')
    : undefined;
  console.log(`node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}`);
  console.log(
    `settings: upstream on ${upstreamHost} (node:http), ${connections} connections, ${duration} s per run ` +
      `(${warmup} s warm-up per target), ${runs} runs (median); load: 1 KiB with autocannon (1 worker thread), ` +
      `1 MiB with ${largeClient === 'node' ? 'a node:http client' : 'autocannon'} (1 worker thread); ` +
      'control plane, host agent and upstream in 3 more worker threads; ' +
      (nginxVersion
        ? `${nginxVersion} with ${nginxWorkers} worker process(es); `
        : `nginx not found (${values.nginx}): its rows are skipped; `) +
      `WebSocket: ${wsMessages} sequential ${WS_MESSAGE.length}-byte messages per run`,
  );

  const dataDir = await mkdtemp(join(tmpdir(), 'wbench-dash-'));
  const nginxDir = nginxBin ? await mkdtemp(join(tmpdir(), 'wbench-nginx-')) : undefined;
  const threads: Thread[] = [];
  let nginx: ChildProcess | undefined;
  let cleaned = false;
  async function cleanup(): Promise<void> {
    if (cleaned) return;
    cleaned = true;
    if (nginx && nginx.exitCode === null && nginx.signalCode === null) {
      const child = nginx;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      if ((await Promise.race([exited, sleep(5000).then(() => 'timeout')])) === 'timeout')
        child.kill('SIGKILL');
    }
    for (const t of threads) await t.stop().catch(() => {});
    await rm(dataDir, { recursive: true, force: true });
    if (nginxDir) await rm(nginxDir, { recursive: true, force: true });
  }
  // `on`, not `once`: a second signal (Ctrl-C twice, or `timeout`, which signals the child and
  // then its whole process group) must not kill the process halfway through the clean-up, which
  // is bounded by its own timeouts.
  let interrupted = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (interrupted) return;
      interrupted = true;
      void cleanup().finally(() => process.exit(130));
    });
  }

  try {
    const t0 = performance.now();
    const agentToken = randomBytes(32).toString('base64url');
    const upstreamW = new Thread({ role: 'upstream', host: upstreamHost });
    const agentW = new Thread({ role: 'agent', agentToken, guestIp: upstreamHost });
    const cpW = new Thread({ role: 'cp', dataDir });
    const clientW = new Thread({ role: 'client' });
    threads.push(cpW, agentW, upstreamW, clientW);
    const [{ port }, { url: agentUrl }, cp] = await Promise.all([
      upstreamW.ready<{ port: number }>(),
      agentW.ready<{ url: string }>(),
      cpW.ready<{ url: string; adminToken: string; joinToken: string }>(),
      clientW.ready(),
    ]);

    // The host joins and heartbeats like the test's ProxyAgent: every tenant "converged" at once.
    const host = await new FakeAgent('bench-host', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 }).start(
      cp.url,
      cp.joinToken,
      0,
      { address: agentUrl, agentToken },
    );
    const created = await call(cp.url, 'POST', '/v1/tenants', {
      token: cp.adminToken,
      body: { name: 'bench', image: FAKE_IMAGE, dashboardPort: port },
    });
    if (created.status !== 202) throw new Error(`create tenant: ${created.status} ${created.text}`);
    const tenantId: string = created.body.tenant.id;
    const vmId = vmIdOfTenant(tenantId);
    await agentW.ask({ type: 'vm', id: vmId });
    const key = await call(cp.url, 'POST', '/v1/keys', { token: cp.adminToken, body: { tenant: tenantId } });
    if (key.status !== 201) throw new Error(`create key: ${key.status} ${key.text}`);
    const tenantKey: string = key.body.token;
    for (let i = 0; i < 3; i++) await host.heartbeat();
    const tenant = await call(cp.url, 'GET', `/v1/tenants/${tenantId}`, { token: tenantKey });
    if (tenant.body?.state !== 'running') throw new Error(`tenant not running: ${tenant.text}`);

    let nginxPids: number[] = [];
    let nginxPort = 0;
    if (nginxBin && nginxDir) {
      // Workers run as an unprivileged user when nginx starts as root: they need to reach
      // their temp directories (nothing else lives in this one).
      await chmod(nginxDir, 0o755);
      nginxPort = await freePort('127.0.0.1');
      const conf = join(nginxDir, 'nginx.conf');
      await writeFile(conf, nginxConf(nginxDir, nginxWorkers, nginxPort, `${upstreamHost}:${port}`));
      let stderr = '';
      nginx = spawn(
        nginxBin,
        ['-p', `${nginxDir}/`, '-e', join(nginxDir, 'error.log'), '-c', conf, '-g', 'daemon off;'],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      nginx.stderr!.on('data', (d) => (stderr += d));
      const why = async () =>
        `${stderr.trim()} ${(await readFile(join(nginxDir, 'error.log'), 'utf8').catch(() => '')).trim()}`;
      await waitForPort(nginxPort, nginx, why);
      const master = nginx.pid!;
      for (let i = 0; i < 100 && nginxPids.length < nginxWorkers + 1; i++) {
        nginxPids = [master, ...(await childrenOf(master))];
        if (nginxPids.length < nginxWorkers + 1) await sleep(20);
      }
    }
    console.log(
      `setup: threads, tenant and nginx ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );

    interface Way {
      key: 'direct' | 'nginx' | 'agent' | 'warren';
      name: string;
      origin: string;
      prefix: string;
      headers: Record<string, string>;
    }
    const ways: Way[] = [
      { key: 'direct', name: 'direct', origin: `http://${upstreamHost}:${port}`, prefix: '', headers: {} },
      ...(nginxBin
        ? [
            {
              key: 'nginx' as const,
              name: `nginx (${nginxWorkers} worker${nginxWorkers > 1 ? 's' : ''})`,
              origin: `http://127.0.0.1:${nginxPort}`,
              prefix: '',
              headers: {},
            },
          ]
        : []),
      {
        key: 'agent',
        name: 'host agent alone (1 hop)',
        origin: agentUrl,
        prefix: `/v1/vms/${vmId}/proxy/${port}`,
        headers: { authorization: `Bearer ${agentToken}` },
      },
      {
        key: 'warren',
        name: 'Warren: control plane → agent',
        origin: cp.url,
        prefix: '/t/bench/dashboard',
        headers: { authorization: `Bearer ${tenantKey}` },
      },
    ];
    interface Size {
      key: 'small' | 'large';
      name: string;
      path: string;
      body: Buffer;
    }
    const sizes: Size[] = (
      [
        { key: 'small', name: 'small (1 KiB)', path: '/small', body: SMALL },
        { key: 'large', name: 'large (1 MiB)', path: '/large', body: LARGE },
      ] as const
    ).filter((x) => values.sizes!.split(',').includes(x.key));
    const clientOf = (size: Size) => (size.key === 'large' ? largeClient : 'autocannon');

    // Every path answers the very same bytes before anything is measured.
    for (const way of ways) {
      for (const size of sizes) {
        const res = await fetch(`${way.origin}${way.prefix}${size.path}`, { headers: way.headers });
        const got = Buffer.from(await res.arrayBuffer());
        if (res.status !== 200 || !got.equals(size.body)) {
          throw new Error(
            `${way.name} ${size.path}: status ${res.status}, ${got.length} bytes, not the expected body`,
          );
        }
      }
    }

    interface Sample {
      upstream: number;
      served: number;
      agent: number;
      cp: number;
      nginx: number;
      process: number;
    }
    const sample = async (): Promise<Sample> => {
      const [u, a, c] = await Promise.all([
        upstreamW.ask<CpuReply>({ type: 'cpu' }),
        agentW.ask<CpuReply>({ type: 'cpu' }),
        cpW.ask<CpuReply>({ type: 'cpu' }),
      ]);
      const p = process.cpuUsage();
      return {
        upstream: u.cpu,
        served: u.served,
        agent: a.cpu,
        cp: c.cpu,
        nginx: await processCpu(nginxPids),
        process: p.user + p.system,
      };
    };
    interface Measured {
      rps: number;
      p50: number;
      p99: number;
      /** ms: measured (node:http client) or connections / req/s (autocannon). */
      mean: number;
      errors: number;
      timeouts: number;
      non2xx: number;
    }
    const fire = async (way: Way, size: Size, seconds: number): Promise<Measured> => {
      const url = `${way.origin}${way.prefix}${size.path}`;
      if (clientOf(size) === 'node') {
        const load: Load = { url, headers: way.headers, connections, seconds, bytes: size.body.length };
        const r = await clientW.ask<LoadResult>({ type: 'load', load });
        return { ...r, timeouts: 0 };
      }
      const r: Result = await autocannon({
        url,
        headers: way.headers,
        connections,
        duration: seconds,
        workers: 1,
      });
      const rps = r.requests.average;
      return {
        rps,
        p50: r.latency.p50,
        p99: r.latency.p99,
        mean: (connections / rps) * 1000,
        errors: r.errors,
        timeouts: r.timeouts,
        non2xx: r.non2xx,
      };
    };
    const ms = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(1));

    // Warm-up (JIT, keep-alive pools), not counted.
    for (const size of sizes) for (const way of ways) await fire(way, size, warmup);

    interface Run extends Measured {
      bad: number;
      /** CPU µs per request answered by the upstream, per component. */
      cpu: { upstream: number; nginx: number; agent: number; cp: number; client: number };
    }
    const results = new Map<string, Run[]>();
    const id = (size: { key: string }, way: Way) => `${size.key}/${way.key}`;
    for (let run = 0; run < runs; run++) {
      // Interleaved, so drift (page cache, thermal, neighbours) hits every target alike.
      for (const size of sizes) {
        for (const way of ways) {
          const before = await sample();
          const r = await fire(way, size, duration);
          const after = await sample();
          const n = Math.max(1, after.served - before.served);
          const per = (k: keyof Sample) => (after[k] - before[k]) / n;
          const cpu = {
            upstream: per('upstream'),
            nginx: per('nginx'),
            agent: per('agent'),
            cp: per('cp'),
            client: per('process') - per('upstream') - per('agent') - per('cp'),
          };
          const bad = r.errors + r.timeouts + r.non2xx;
          const list = results.get(id(size, way)) ?? [];
          list.push({ ...r, bad, cpu });
          results.set(id(size, way), list);
          console.log(
            `  run ${run + 1}/${runs} ${size.key.padEnd(5)} ${way.name.padEnd(30)} ${r.rps.toFixed(0).padStart(6)} req/s, ` +
              `p50 ${ms(r.p50)} ms, p99 ${ms(r.p99)} ms` +
              (bad > 0 ? `  (errors ${r.errors}, timeouts ${r.timeouts}, non-2xx ${r.non2xx})` : ''),
          );
        }
      }
    }

    const pad = (s: string, n: number) => s.padStart(n);
    const summary = new Map<string, { rps: number; mean: number }>();
    let bad = 0;
    for (const size of sizes) {
      const rows = ways.map((way) => {
        const rs = results.get(id(size, way))!;
        bad += rs.reduce((n, r) => n + r.bad, 0);
        const cpu = (k: keyof Run['cpu']) => median(rs.map((r) => r.cpu[k]));
        return {
          way,
          rps: median(rs.map((r) => r.rps)),
          p50: median(rs.map((r) => r.p50)),
          p99: median(rs.map((r) => r.p99)),
          mean: median(rs.map((r) => r.mean)),
          cpu: {
            upstream: cpu('upstream'),
            nginx: cpu('nginx'),
            agent: cpu('agent'),
            cp: cpu('cp'),
            client: cpu('client'),
          },
        };
      });
      const direct = rows.find((r) => r.way.key === 'direct')!.rps;
      const viaNginx = rows.find((r) => r.way.key === 'nginx')?.rps;
      const large = size.key === 'large';
      console.log('');
      console.log(
        `${`${size.name}, ${clientOf(size) === 'node' ? 'node:http client' : 'autocannon'}`.padEnd(32)} ` +
          `${pad('req/s', 7)} ${large ? `${pad('MiB/s', 7)} ` : ''}${pad('p50 ms', 7)} ${pad('p99 ms', 7)} ` +
          `${pad('mean ms', 8)} ${pad('vs direct', 10)}${viaNginx ? ` ${pad('vs nginx', 9)}` : ''}`,
      );
      for (const r of rows) {
        summary.set(id(size, r.way), { rps: r.rps, mean: r.mean });
        console.log(
          `${r.way.name.padEnd(32)} ${pad(r.rps.toFixed(0), 7)} ` +
            `${large ? `${pad(((r.rps * size.body.length) / 2 ** 20).toFixed(0), 7)} ` : ''}` +
            `${pad(ms(r.p50), 7)} ${pad(ms(r.p99), 7)} ${pad(r.mean.toFixed(2), 8)} ` +
            `${pad(`${(r.rps / direct).toFixed(2)}x`, 10)}` +
            `${viaNginx ? ` ${pad(`${(r.rps / viaNginx).toFixed(2)}x`, 9)}` : ''}`,
        );
      }
      console.log(
        `${'  CPU µs per request'.padEnd(32)} ${pad('upstream', 8)} ${pad('nginx', 7)} ${pad('agent', 7)} ` +
          `${pad('control plane', 13)} ${pad('proxy total', 11)} ${pad('client+rest', 11)}`,
      );
      for (const r of rows) {
        const c = r.cpu;
        const f = (x: number, n: number) => pad(x.toFixed(0), n);
        console.log(
          `  ${r.way.name.padEnd(30)} ${f(c.upstream, 8)} ${f(c.nginx, 7)} ${f(c.agent, 7)} ${f(c.cp, 13)} ` +
            `${f(c.nginx + c.agent + c.cp, 11)} ${f(c.client, 11)}`,
        );
      }
    }

    // WebSocket: one message at a time, each waiting for its echo; per-run p50/p99, median of runs.
    const wsPaths = ways.map((w) => ({ ...w, url: `${w.origin.replace(/^http/, 'ws')}${w.prefix}/ws` }));
    const ws = new Map<string, { p50: number[]; p99: number[]; mean: number[] }>(
      wsPaths.map((w) => [w.key, { p50: [], p99: [], mean: [] }]),
    );
    for (let run = 0; run < runs; run++) {
      for (const w of wsPaths) {
        const rtts = await echoRoundTrips(w.url, w.headers, wsMessages, 200);
        const sorted = [...rtts].sort((a, b) => a - b);
        const s = ws.get(w.key)!;
        s.p50.push(quantile(sorted, 0.5));
        s.p99.push(quantile(sorted, 0.99));
        s.mean.push(rtts.reduce((a, b) => a + b, 0) / rtts.length);
      }
    }
    const us = (ms: number) => (ms * 1000).toFixed(0);
    const wsDirect = median(ws.get('direct')!.p50);
    const wsNginx = ws.has('nginx') ? median(ws.get('nginx')!.p50) : undefined;
    console.log('');
    console.log(
      `${'WebSocket echo round trip'.padEnd(32)} ${pad('p50 µs', 7)} ${pad('p99 µs', 7)} ${pad('mean µs', 8)} ` +
        `${pad('vs direct', 10)} ${pad('added µs', 9)}${wsNginx ? ` ${pad('vs nginx', 9)}` : ''}`,
    );
    for (const w of wsPaths) {
      const s = ws.get(w.key)!;
      const p50 = median(s.p50);
      console.log(
        `${w.name.padEnd(32)} ${pad(us(p50), 7)} ${pad(us(median(s.p99)), 7)} ${pad(us(median(s.mean)), 8)} ` +
          `${pad(`${(p50 / wsDirect).toFixed(2)}x`, 10)} ${pad(us(p50 - wsDirect), 9)}` +
          (wsNginx ? ` ${pad(`${(p50 / wsNginx).toFixed(2)}x`, 9)}` : ''),
      );
    }

    console.log('');
    for (const size of sizes) {
      const direct = summary.get(`${size.key}/direct`)!.mean;
      console.log(
        `added mean latency per ${size.key} request over direct: ` +
          ways
            .filter((w) => w.key !== 'direct')
            .map((w) => `${w.key} ${(summary.get(id(size, w))!.mean - direct).toFixed(2)} ms`)
            .join(', '),
      );
    }
    console.log(
      'autocannon p50/p99: whole ms, rounded down (0 means under 1 ms), and mean ms = connections / req/s ' +
        "(Little's law); node:http client: exact. vs: req/s ratio. CPU µs per request: the thread's " +
        "(or nginx processes') user+system CPU time over the run / requests the upstream answered; " +
        'client+rest: the rest of this process (the load generator, V8 and libuv helper threads).',
    );
    if (nginxDir) {
      // At level warn, nginx logs each response it had to spill to a temporary file.
      const log = (await readFile(join(nginxDir, 'error.log'), 'utf8').catch(() => '')).split('\n');
      const lines = log.filter((l) => l.trim() !== '' && !l.includes('[notice]'));
      const spilled = lines.filter((l) => l.includes('buffered to a temporary file')).length;
      console.log(
        `nginx error log: ${lines.length} warnings or errors (${spilled} responses buffered to a temp file)`,
      );
    }
    if (bad > 0) console.log(`WARNING: ${bad} failed or non-2xx responses in the measured runs`);
  } finally {
    await cleanup();
  }
}

/** `warm` + `n` sequential echoes of one small text message; the round-trip times of the last n, ms. */
async function echoRoundTrips(
  url: string,
  headers: Record<string, string>,
  n: number,
  warm: number,
): Promise<number[]> {
  const ws = new WebSocket(url, { headers });
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`WebSocket to ${url} failed`));
  });
  let next: (data: unknown) => void = () => {};
  ws.onmessage = (e) => next(e.data);
  const out: number[] = [];
  for (let i = 0; i < warm + n; i++) {
    const got = new Promise((r) => (next = r));
    const t0 = performance.now();
    ws.send(WS_MESSAGE);
    if ((await got) !== WS_MESSAGE) throw new Error(`WebSocket ${url}: the echo differs`);
    if (i >= warm) out.push(performance.now() - t0);
  }
  const closed = new Promise((r) => (ws.onclose = r));
  ws.close();
  await Promise.race([closed, sleep(2000)]);
  return out;
}
