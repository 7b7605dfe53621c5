import { createHash, timingSafeEqual } from 'node:crypto';
import { WarrenError } from '@warren/protocol';
import { Counter, createRegistry, Gauge, Histogram, type Registry } from '@warren/telemetry';
import type { FastifyInstance } from 'fastify';
import type { VmManager } from './vm/vm-manager.ts';

/** The host agent's metrics; `/metrics` on its local socket, and on the remote API with WARREN_METRICS_TOKEN. */
export interface HostMetrics {
  registry: Registry;
  execs: Counter<'result'>;
  proxyBytes: Counter<'direction'>;
  reconcileErrors: Counter<'code'>;
}

/** Boots under TCG take seconds, under KVM well under one; a wake is faster than either. */
const BOOT_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120];

export function createHostMetrics(vms: VmManager): HostMetrics {
  const registry = createRegistry();
  const registers = [registry];
  const boots = new Counter({
    name: 'warren_vm_boots_total',
    help: 'VM starts, by kind (cold, template, wake) and result (ok, failed)',
    labelNames: ['kind', 'result'],
    registers,
  });
  const bootSeconds = new Histogram({
    name: 'warren_vm_boot_duration_seconds',
    help: "Seconds from a VM's start until its guest agent answered, by kind (cold, template, wake); successful starts only",
    labelNames: ['kind'],
    buckets: BOOT_BUCKETS,
    registers,
  });
  vms.on('boot', (_id, b) => {
    boots.inc({ kind: b.kind, result: b.ok ? 'ok' : 'failed' });
    if (b.ok) bootSeconds.observe({ kind: b.kind }, b.seconds);
  });
  // One pass over the running VMs' cgroups per scrape fills both per-VM metrics: each one's
  // collect waits for the same pass (a scrape collects every metric at once).
  let reading: Promise<void> | undefined;
  const readUsage = () =>
    (reading ??= (async () => {
      const usage: [string, Awaited<ReturnType<VmManager['usage']>>][] = [];
      for (const vm of await vms.list()) {
        if (vm.state === 'running') usage.push([vm.id, await vms.usage(vm.id).catch(() => ({}))]);
      }
      cpu.reset();
      memory.reset();
      for (const [vm, u] of usage) {
        if (u.cpuSeconds !== undefined) cpu.inc({ vm }, u.cpuSeconds);
        if (u.memoryBytes !== undefined) memory.set({ vm }, u.memoryBytes);
      }
    })().finally(() => {
      reading = undefined;
    }));
  const cpu = new Counter({
    name: 'warren_vm_cpu_seconds_total',
    help: "CPU time a running VM's cgroup (its VMM) has used since it started, by VM",
    labelNames: ['vm'],
    registers,
    collect: readUsage,
  });
  const memory = new Gauge({
    name: 'warren_vm_memory_bytes',
    help: "Memory a running VM's cgroup holds now (guest memory the VMM touched, plus its own), by VM",
    labelNames: ['vm'],
    registers,
    collect: readUsage,
  });
  new Gauge({
    name: 'warren_vms',
    help: 'VMs on this host by state',
    labelNames: ['state'],
    registers,
    async collect() {
      this.reset();
      const counts = new Map<string, number>();
      for (const vm of await vms.list()) counts.set(vm.state, (counts.get(vm.state) ?? 0) + 1);
      for (const [state, n] of counts) this.set({ state }, n);
    },
  });
  return {
    registry,
    execs: new Counter({
      name: 'warren_vm_exec_total',
      help: 'Exec requests to VMs through the remote API, by result (ok, or the error code)',
      labelNames: ['result'],
      registers,
    }),
    proxyBytes: new Counter({
      name: 'warren_dashboard_proxy_bytes_total',
      help: 'Bytes through the dashboard proxy to VM ports: in (toward the VM) and out, WebSocket tunnels included',
      labelNames: ['direction'],
      registers,
    }),
    reconcileErrors: new Counter({
      name: 'warren_reconcile_errors_total',
      help: 'Failed reconcile steps (create, start, stop, destroy, network, …) by error code',
      labelNames: ['code'],
      registers,
    }),
  };
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * `GET /metrics`. On the local socket (root only) it is open (`auth` undefined). On the remote
 * API it needs WARREN_METRICS_TOKEN (`auth.token`): no credential or an unknown one is 401, a
 * credential of another kind (the control plane's agent token) is 403, and without a metrics
 * token set it is 403 for everyone.
 */
export function registerHostMetricsRoute(
  app: FastifyInstance,
  metrics: HostMetrics,
  auth?: { token: string | undefined; otherCredentials: string[] },
): void {
  const expected = auth?.token ? digest(auth.token) : undefined;
  const others = (auth?.otherCredentials ?? []).map(digest);
  app.get('/metrics', async (req, reply) => {
    if (auth) {
      const m = /^Bearer (\S+)$/i.exec(req.headers.authorization ?? '');
      if (!m)
        throw new WarrenError(
          'UNAUTHENTICATED',
          '/metrics needs `Authorization: Bearer <WARREN_METRICS_TOKEN>`',
        );
      const presented = digest(m[1]!);
      const ok = expected !== undefined && timingSafeEqual(presented, expected);
      if (!ok && !expected)
        throw new WarrenError(
          'FORBIDDEN',
          'WARREN_METRICS_TOKEN is not set on this host: set it, or read /metrics on the local socket',
        );
      if (!ok && others.some((o) => timingSafeEqual(presented, o)))
        throw new WarrenError('FORBIDDEN', '/metrics needs WARREN_METRICS_TOKEN, not the agent token');
      if (!ok) throw new WarrenError('UNAUTHENTICATED', 'wrong metrics token');
    }
    return reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics());
  });
}
