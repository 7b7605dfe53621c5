/**
 * Read path of the API: requests/s and latency p50/p99 of `GET /v1/tenants/:id` called with
 * each tenant's own API key (bearer lookup by token hash, scope check, tenant read by id,
 * host health read), against a real control plane whose SQLite file is on disk, holding N
 * tenants (default 1,000) placed on fake hosts. Median of R runs (default 3) of D seconds
 * (default 10) with C connections (default 10), driven by autocannon in a worker thread so
 * the load generator does not share the server's event loop.
 *
 *   npm run bench:api -- [--tenants 1000] [--connections 10] [--duration 10] [--runs 3]
 *
 * Baselines measured in the same run, same process, interleaved with the route above:
 * `GET /v1/health` on the same server (public, one trivial SQL query) and a bare Fastify
 * hello-world on another port, so the table shows what auth and the store cost over the
 * framework floor.
 */

import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import autocannon, { type Request, type Result } from 'autocannon';
import Fastify, { type FastifyInstance } from 'fastify';
import {
  call,
  FAKE_IMAGE,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../test/helpers/api.ts';
import { median, positiveInt } from './common.ts';

const { values } = parseArgs({
  options: {
    tenants: { type: 'string', default: '1000' },
    connections: { type: 'string', default: '10' },
    duration: { type: 'string', default: '10' },
    runs: { type: 'string', default: '3' },
  },
});
const int = (name: keyof typeof values): number => positiveInt(values, name);
const tenantCount = int('tenants');
const connections = int('connections');
const duration = int('duration');
const runs = int('runs');

/** Tenants per fake host; hosts get room for a few more than that. */
const PER_HOST = 100;
const hostCount = Math.ceil(tenantCount / PER_HOST);
// Default tenant resources are 1 vCPU, 1024 MiB, 4096 MiB disk.
const hostCapacity = { vcpus: 128, memoryMiB: 128 * 1024, diskMiB: 128 * 4096 };

console.log(`node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}`);
console.log(
  `settings: ${tenantCount} tenants (one API key each) on ${hostCount} fake hosts, ` +
    `${connections} connections, ${duration} s per run, ${runs} runs (median), ` +
    'autocannon in 1 worker thread, SQLite on disk (WAL, synchronous=FULL)',
);

const dataDir = await mkdtemp(join(tmpdir(), 'wbench-api-'));
const agents: FakeAgent[] = [];
let cp: TestControlPlane | undefined;
let bare: FastifyInstance | undefined;
let cleaned = false;
async function cleanup(): Promise<void> {
  if (cleaned) return;
  cleaned = true;
  for (const a of agents) await a.stop().catch(() => {});
  await cp?.close().catch(() => {});
  await bare?.close().catch(() => {});
  await rm(dataDir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => void cleanup().finally(() => process.exit(130)));
}

try {
  // Hosts stay healthy for the whole run without periodic heartbeats, which would otherwise
  // write every tenant row of each host every 2 s and load the server under test.
  cp = await openTestControlPlane(
    { heartbeatTimeoutMs: 3_600_000, maxTenants: Math.max(10_000, tenantCount) },
    dataDir,
  );
  for (let i = 0; i < hostCount; i++) {
    agents.push(await new FakeAgent(`bench-host-${i}`, hostCapacity).start(cp.url, cp.joinToken));
  }

  const t0 = performance.now();
  const tenants: { id: string; token: string }[] = [];
  for (let i = 0; i < tenantCount; i++) {
    const created = await call(cp.url, 'POST', '/v1/tenants', {
      token: cp.adminToken,
      body: { name: `bench-${i}`, image: FAKE_IMAGE },
    });
    if (created.status !== 202) throw new Error(`create tenant: ${created.status} ${created.text}`);
    const id: string = created.body.tenant.id;
    const key = await call(cp.url, 'POST', '/v1/keys', { token: cp.adminToken, body: { tenant: id } });
    if (key.status !== 201) throw new Error(`create key: ${key.status} ${key.text}`);
    tenants.push({ id, token: key.body.token });
  }
  // Two heartbeat rounds: the first hands each agent its tenants, the second reports them running.
  for (let round = 0; round < 2; round++) for (const a of agents) await a.heartbeat();
  // Every key is used once before measuring (its first use writes last_used_at), and the
  // response checked to be the realistic one: a running tenant on a healthy host.
  for (const { id, token } of tenants) {
    const r = await call(cp.url, 'GET', `/v1/tenants/${id}`, { token });
    if (r.status !== 200 || r.body.state !== 'running' || r.body.hostHealthy !== true) {
      throw new Error(`GET /v1/tenants/${id}: ${r.status} ${r.text}`);
    }
  }
  console.log(
    `setup: ${tenantCount} tenants and keys created over HTTP in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );

  bare = Fastify({ logger: false });
  bare.get('/', async () => ({ hello: 'world' }));
  await bare.listen({ host: '127.0.0.1', port: 0 });
  const bareUrl = `http://127.0.0.1:${(bare.server.address() as AddressInfo).port}`;

  // Each connection walks the tenants in a shuffled (seeded) order, each with its own key.
  let seed = 42;
  const order = [...tenants];
  for (let i = order.length - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1_664_525) + 1_013_904_223) >>> 0;
    const j = seed % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const tenantRequests: Request[] = order.map((x) => ({
    method: 'GET',
    path: `/v1/tenants/${x.id}`,
    headers: { authorization: `Bearer ${x.token}` },
  }));

  const targets: { name: string; opts: { url: string; requests?: Request[] } }[] = [
    { name: 'bare Fastify GET / (floor)', opts: { url: bareUrl } },
    { name: 'GET /v1/health (public, 1 query)', opts: { url: `${cp.url}/v1/health` } },
    {
      name: 'GET /v1/tenants/:id (tenant key)',
      opts: { url: cp.url, requests: tenantRequests },
    },
  ];
  const fire = (opts: { url: string; requests?: Request[] }, seconds: number): Promise<Result> =>
    autocannon({ ...opts, connections, duration: seconds, workers: 1 });

  // Warm-up (JIT, SQLite page cache, keep-alive paths), not counted.
  for (const target of targets) await fire(target.opts, 2);

  const results = new Map<string, Result[]>(targets.map((x) => [x.name, []]));
  for (let run = 0; run < runs; run++) {
    // Interleaved, so drift (page cache, thermal, neighbours) hits every target alike.
    for (const target of targets) {
      const r = await fire(target.opts, duration);
      results.get(target.name)!.push(r);
      console.log(
        `  run ${run + 1}/${runs} ${target.name.padEnd(34)} ${r.requests.average.toFixed(0).padStart(6)} req/s, ` +
          `p50 ${r.latency.p50} ms, p99 ${r.latency.p99} ms` +
          (r.errors + r.timeouts + r.non2xx > 0
            ? `  (errors ${r.errors}, timeouts ${r.timeouts}, non-2xx ${r.non2xx})`
            : ''),
      );
    }
  }

  const rows = targets.map(({ name }) => {
    const rs = results.get(name)!;
    return {
      name,
      rps: median(rs.map((r) => r.requests.average)),
      p50: median(rs.map((r) => r.latency.p50)),
      p99: median(rs.map((r) => r.latency.p99)),
      bad: rs.reduce((n, r) => n + r.errors + r.timeouts + r.non2xx, 0),
    };
  });
  const floor = rows[0]!.rps;
  console.log('');
  console.log(
    `${'route'.padEnd(34)} ${'req/s'.padStart(7)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ` +
      `${'mean ms'.padStart(8)} ${'vs bare'.padStart(8)}`,
  );
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(34)} ${r.rps.toFixed(0).padStart(7)} ${String(r.p50).padStart(7)} ` +
        `${String(r.p99).padStart(7)} ${((connections / r.rps) * 1000).toFixed(2).padStart(8)} ` +
        `${`${(r.rps / floor).toFixed(2)}x`.padStart(8)}`,
    );
  }
  // The server is one thread at saturation, so 1/throughput is its time per request.
  const us = (rps: number) => 1e6 / rps;
  console.log(
    `\nserver time per request (1 / req/s): bare ${us(floor).toFixed(0)} µs, health ${us(rows[1]!.rps).toFixed(0)} µs, ` +
      `tenant read ${us(rows[2]!.rps).toFixed(0)} µs; auth + tenant read + host health cost ` +
      `${(us(rows[2]!.rps) - us(rows[1]!.rps)).toFixed(0)} µs over /v1/health`,
  );
  console.log(
    'p50/p99: autocannon records latency in whole ms, rounded down (0 means under 1 ms); ' +
      "mean ms: connections / req/s (Little's law), finer-grained. vs bare: req/s ratio.",
  );
  const bad = rows.reduce((n, r) => n + r.bad, 0);
  if (bad > 0) console.log(`WARNING: ${bad} failed or non-2xx responses in the measured runs`);
} finally {
  await cleanup();
}
