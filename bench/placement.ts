/**
 * Placement: time to place T tenants (default 10,000) on H simulated hosts (default 1,000)
 * through the real transactional path, TenantService.create (quota check, image resolution,
 * the name and tenant-count checks, placeTenant's conditional UPDATE, tenant and operation
 * inserts, then the wake nudge to the host), one after the other, on a SQLite file on disk.
 * Hosts are registered through HostService.join and .heartbeat, with varied capacities;
 * tenants have varied sizes. Both come from a seeded generator, so runs are comparable.
 * At the end the store is checked: no host over capacity, each host's allocation equal to
 * the sum of its tenants' resources.
 *
 *   npm run bench:placement -- [--tenants 10000] [--hosts 1000] [--seed 1] [--baseline-runs 3]
 *
 * Baseline in the same run: the pure in-memory policy (rank() from scheduler/policy.ts) over
 * the same host list with allocation updated in memory, for the same placements (median of
 * --baseline-runs), so the ratio shows what the store transaction costs over the policy.
 */

import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import {
  type ControlPlane,
  type HostCandidate,
  loadConfig,
  openControlPlane,
  rank,
} from '@warren/control-plane';
import { type Resources, WarrenError } from '@warren/protocol';
import { FAKE_IMAGE } from '../test/helpers/api.ts';
import { positiveInt } from './common.ts';

const { values } = parseArgs({
  options: {
    tenants: { type: 'string', default: '10000' },
    hosts: { type: 'string', default: '1000' },
    seed: { type: 'string', default: '1' },
    'baseline-runs': { type: 'string', default: '3' },
  },
});
/** The simulated hosts join in process, as if with the reusable join token. */
const JOINED_BY = { kind: 'join', keyId: 'key_0000000000000000', singleUse: false } as const;

const int = (name: keyof typeof values): number => positiveInt(values, name);
const tenantCount = int('tenants');
const hostCount = int('hosts');
const baselineRuns = int('baseline-runs');

/** mulberry32: small, seeded, good enough to pick sizes. */
let state = int('seed') >>> 0;
const rand = (): number => {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
};
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
/** Nearest-rank percentile, q in [0, 1]. */
const pct = (xs: number[], q: number) => {
  const s = sorted(xs);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
};
const median = (xs: number[]) => pct(xs, 0.5);
const ms = (x: number) => (x < 1 ? x.toFixed(3) : x.toFixed(2));

// Hosts: 16-32 vCPUs, 64-256 GiB, 0.5-2 TiB. Tenants, within the default quota (4 vCPU, 8 GiB,
// 64 GiB disk): mostly small. At the defaults this fills about 80% of the vCPUs.
const hostSpecs: Resources[] = Array.from({ length: hostCount }, () => ({
  vcpus: pick([16, 24, 32]),
  memoryMiB: pick([64, 128, 256]) * 1024,
  diskMiB: pick([512, 1024, 2048]) * 1024,
}));
const SIZES: [weight: number, Resources][] = [
  [50, { vcpus: 1, memoryMiB: 1024, diskMiB: 4096 }],
  [30, { vcpus: 2, memoryMiB: 4096, diskMiB: 16_384 }],
  [15, { vcpus: 4, memoryMiB: 8192, diskMiB: 32_768 }],
  [5, { vcpus: 4, memoryMiB: 8192, diskMiB: 65_536 }],
];
const tenantSizes: Resources[] = Array.from({ length: tenantCount }, () => {
  let x = rand() * 100;
  for (const [w, r] of SIZES) {
    if (x < w) return r;
    x -= w;
  }
  return SIZES[0]![1];
});
const total = (rs: Resources[]): Resources =>
  rs.reduce(
    (a, r) => ({
      vcpus: a.vcpus + r.vcpus,
      memoryMiB: a.memoryMiB + r.memoryMiB,
      diskMiB: a.diskMiB + r.diskMiB,
    }),
    { vcpus: 0, memoryMiB: 0, diskMiB: 0 },
  );
const capacity = total(hostSpecs);
const demand = total(tenantSizes);
const share = (k: keyof Resources) => demand[k] / capacity[k];
if (share('vcpus') > 0.95 || share('memoryMiB') > 0.95 || share('diskMiB') > 0.95) {
  throw new Error(
    `${tenantCount} tenants need ${(share('vcpus') * 100).toFixed(0)}% of the vCPUs of ${hostCount} hosts; add --hosts`,
  );
}

console.log(`node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}`);
console.log(
  `settings: ${tenantCount} tenants on ${hostCount} hosts (seed ${values.seed}), sequential creates, ` +
    'SQLite on disk (WAL, synchronous=FULL); tenants will use ' +
    `${(share('vcpus') * 100).toFixed(0)}% of vCPUs, ${(share('memoryMiB') * 100).toFixed(0)}% of memory, ` +
    `${(share('diskMiB') * 100).toFixed(0)}% of disk`,
);

const dataDir = await mkdtemp(join(tmpdir(), 'wbench-place-'));
// Hosts' registered address: one tiny server stands in for every agent's wake endpoint.
let wakes = 0;
const sink = createServer((req, res) => {
  wakes++;
  req.resume();
  res.writeHead(204).end();
});
let cp: ControlPlane | undefined;
let cleaned = false;
async function cleanup(): Promise<void> {
  if (cleaned) return;
  cleaned = true;
  await cp?.close().catch(() => {});
  sink.closeAllConnections();
  await new Promise<void>((r) => (sink.listening ? sink.close(() => r()) : r()));
  await rm(dataDir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => void cleanup().finally(() => process.exit(130)));
}

try {
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  const sinkUrl = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`;
  // No agent heartbeats during the run (1,000 hosts every 2 s would be a load of its own),
  // so the heartbeat timeout is long enough for every host to stay healthy throughout.
  cp = await openControlPlane(
    loadConfig(
      {},
      {
        dataDir,
        host: '127.0.0.1',
        port: 0,
        heartbeatTimeoutMs: 24 * 3_600_000,
        maxTenants: Math.max(10_000, tenantCount),
      },
    ),
  );

  let t0 = performance.now();
  const hostIds: string[] = [];
  for (const [i, capacity] of hostSpecs.entries()) {
    const { hostId } = await cp.hosts.join(
      {
        name: `sim-host-${i}`,
        address: sinkUrl,
        agentToken: randomBytes(32).toString('base64url'),
        agentVersion: 'bench',
        capacity,
      },
      JOINED_BY,
    );
    await cp.hosts.heartbeat(hostId, {
      agentVersion: 'bench',
      capacity,
      health: 'ok',
      images: [{ id: FAKE_IMAGE, profile: 'standard', createdAt: '2026-01-01T00:00:00.000Z' }],
      vms: [],
    });
    hostIds.push(hostId);
  }
  const registerMs = performance.now() - t0;
  console.log(
    `setup: ${hostCount} hosts joined and heartbeated in ${(registerMs / 1000).toFixed(1)} s ` +
      `(${ms(registerMs / hostCount)} ms per host, two transactions each)`,
  );

  // Baseline: the policy alone, in memory, over the same hosts (same ids, so the same tie-breaks).
  const baseline: { totalMs: number; times: number[]; chosen: (string | null)[] }[] = [];
  for (let run = 0; run < baselineRuns; run++) {
    const hosts: HostCandidate[] = hostIds.map((id, i) => ({
      id,
      capacity: hostSpecs[i]!,
      allocated: { vcpus: 0, memoryMiB: 0, diskMiB: 0 },
    }));
    const times: number[] = [];
    const chosen: (string | null)[] = [];
    const start = performance.now();
    for (const r of tenantSizes) {
      const t = performance.now();
      const best = rank(hosts, r)[0];
      if (best) {
        best.allocated.vcpus += r.vcpus;
        best.allocated.memoryMiB += r.memoryMiB;
        best.allocated.diskMiB += r.diskMiB;
      }
      times.push(performance.now() - t);
      chosen.push(best?.id ?? null);
    }
    baseline.push({ totalMs: performance.now() - start, times, chosen });
  }
  const base = baseline.find((b) => b.totalMs === median(baseline.map((x) => x.totalMs)))!;

  // Warm-up (JIT) on a throwaway store, so the first decile below is not mostly compilation.
  const warm = await openControlPlane(
    loadConfig({}, { dataDir: join(dataDir, 'warm-up'), port: 0, heartbeatTimeoutMs: 3_600_000 }),
  );
  try {
    for (let i = 0; i < 20; i++) {
      const capacity = { vcpus: 64, memoryMiB: 256 * 1024, diskMiB: 2048 * 1024 };
      const { hostId } = await warm.hosts.join(
        {
          name: `warm-${i}`,
          address: sinkUrl,
          agentToken: randomBytes(32).toString('base64url'),
          agentVersion: 'bench',
          capacity,
        },
        JOINED_BY,
      );
      await warm.hosts.heartbeat(hostId, {
        agentVersion: 'bench',
        capacity,
        health: 'ok',
        images: [{ id: FAKE_IMAGE, profile: 'standard', createdAt: '2026-01-01T00:00:00.000Z' }],
        vms: [],
      });
    }
    for (let i = 0; i < 500; i++) {
      await warm.tenants.create({ name: `warm-${i}`, ...tenantSizes[i % tenantSizes.length]! });
      await new Promise((r) => setImmediate(r));
    }
  } finally {
    await warm.close();
  }
  const warmWakes = wakes;

  // The real path. node:sqlite is synchronous, so create() never yields to the event loop;
  // between creates the loop gets a turn (untimed), as it would between HTTP requests, so
  // the wake nudges go out as they would in the server.
  const times: number[] = [];
  const chosen: (string | null)[] = [];
  let refused = 0;
  t0 = performance.now();
  for (const [i, r] of tenantSizes.entries()) {
    const t = performance.now();
    try {
      const { tenant } = await cp.tenants.create({ name: `bench-${i}`, ...r });
      if (tenant.imageId !== FAKE_IMAGE) throw new Error(`unexpected image ${tenant.imageId}`);
      chosen.push(tenant.hostId);
    } catch (e) {
      if (!(e instanceof WarrenError && e.code === 'NO_CAPACITY')) throw e;
      refused++;
      chosen.push(null);
    }
    times.push(performance.now() - t);
    await new Promise((r) => setImmediate(r));
  }
  const wallMs = performance.now() - t0;
  const storeMs = times.reduce((a, b) => a + b, 0);
  // Let the last nudges land before counting them.
  for (let i = 0; i < 100 && wakes - warmWakes < tenantCount - refused; i++) await sleep(50);

  // Checks, straight from the store.
  const db = cp.store.db;
  const hostRows = await db.selectFrom('hosts').selectAll().execute();
  const sums = await db
    .selectFrom('tenants')
    .select((eb) => [
      'host_id',
      eb.fn.sum<number>('vcpus').as('vcpus'),
      eb.fn.sum<number>('memory_mib').as('mem'),
      eb.fn.sum<number>('disk_mib').as('disk'),
    ])
    .groupBy('host_id')
    .execute();
  const byHost = new Map(sums.map((s) => [s.host_id, s]));
  const over = hostRows.filter(
    (h) =>
      h.alloc_vcpus > h.cap_vcpus ||
      h.alloc_memory_mib > h.cap_memory_mib ||
      h.alloc_disk_mib > h.cap_disk_mib,
  ).length;
  const matching = hostRows.filter((h) => {
    const s = byHost.get(h.id);
    return (
      h.alloc_vcpus === Number(s?.vcpus ?? 0) &&
      h.alloc_memory_mib === Number(s?.mem ?? 0) &&
      h.alloc_disk_mib === Number(s?.disk ?? 0)
    );
  }).length;
  const { n: tenantRows } = await db
    .selectFrom('tenants')
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .executeTakeFirstOrThrow();
  const { n: opRows } = await db
    .selectFrom('operations')
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .executeTakeFirstOrThrow();
  const placed = tenantCount - refused;
  const same = chosen.filter((h, i) => h === base.chosen[i]).length;
  const ok =
    over === 0 &&
    matching === hostRows.length &&
    byHost.size <= hostRows.length &&
    Number(tenantRows) === placed &&
    Number(opRows) === placed;

  const deciles = (xs: number[]) =>
    Array.from({ length: 10 }, (_, d) =>
      median(xs.slice(Math.floor((d * xs.length) / 10), Math.floor(((d + 1) * xs.length) / 10))),
    );
  const report = (name: string, totalMs: number, xs: number[]) => {
    const d = deciles(xs);
    console.log(
      `${name.padEnd(26)} total ${(totalMs / 1000).toFixed(2).padStart(7)} s, ` +
        `${((tenantCount / totalMs) * 1000).toFixed(0).padStart(7)} placements/s, ` +
        `p50 ${ms(median(xs))} ms, p99 ${ms(pct(xs, 0.99))} ms`,
    );
    console.log(
      `${''.padEnd(26)} median per decile (ms): ${d.map(ms).join(' ')}; ` +
        `last 10% / first 10%: ${(d[9]! / d[0]!).toFixed(2)}x`,
    );
  };
  console.log('');
  report(`in-memory rank() (median of ${baselineRuns})`, base.totalMs, base.times);
  report('TenantService.create', storeMs, times);
  console.log(
    `${''.padEnd(26)} wall time with the wake nudges between creates: ${(wallMs / 1000).toFixed(2)} s`,
  );
  console.log(
    `\nstore path / in-memory policy: ${(storeMs / base.totalMs).toFixed(1)}x total, ` +
      `${(median(times) / median(base.times)).toFixed(1)}x per placement (p50); ` +
      `store overhead ${ms(median(times) - median(base.times))} ms per placement (p50)`,
  );
  const used = hostRows.reduce(
    (a, h) => ({ v: a.v + h.alloc_vcpus, m: a.m + h.alloc_memory_mib, d: a.d + h.alloc_disk_mib }),
    { v: 0, m: 0, d: 0 },
  );
  console.log(
    `check: ${placed} placed, ${refused} refused (NO_CAPACITY); ${over} of ${hostRows.length} hosts over capacity; ` +
      `allocation = sum of its tenants' resources on ${matching}/${hostRows.length} hosts; ` +
      `${tenantRows} tenant rows, ${opRows} operation rows; ` +
      `store chose the same host as the in-memory policy for ${same}/${tenantCount}; ` +
      `in use: ${((used.v / capacity.vcpus) * 100).toFixed(1)}% vCPU, ${((used.m / capacity.memoryMiB) * 100).toFixed(1)}% memory, ` +
      `${((used.d / capacity.diskMiB) * 100).toFixed(1)}% disk; wake nudges received ${wakes - warmWakes}: ${ok ? 'OK' : 'FAILED'}`,
  );
  if (!ok) process.exitCode = 1;
} finally {
  await cleanup();
}
