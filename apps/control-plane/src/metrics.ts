import { createHash, timingSafeEqual } from 'node:crypto';
import { WarrenError } from '@warren/protocol';
import { Counter, createRegistry, Gauge, type Registry } from '@warren/telemetry';
import type { FastifyInstance } from 'fastify';
import { authenticate } from './auth/principal.ts';
import type { ControlPlaneConfig } from './config.ts';
import type { EventHub } from './events/hub.ts';
import { healthySince, isHealthy } from './hosts/health.ts';
import type { Db } from './store/index.ts';

/** Counters the control plane moves as things happen; gauges are read from the store at each scrape. */
export interface ControlPlaneMetrics {
  registry: Registry;
  execs: Counter<'result'>;
  dashboardBytes: Counter<'direction'>;
  /** Tenant VMs a heartbeat reported entering failed, crashed or unhealthy, by error code. */
  reportedErrors: Counter<'code'>;
}

export function createMetrics(deps: {
  db: Db;
  config: ControlPlaneConfig;
  hub: EventHub;
}): ControlPlaneMetrics {
  const registry = createRegistry();
  const { db, config, hub } = deps;
  const registers = [registry];
  new Gauge({
    name: 'warren_tenants',
    help: 'Tenants by state (as their hosts last reported) and desired state',
    labelNames: ['state', 'desired'],
    registers,
    async collect() {
      const rows = await db
        .selectFrom('tenants')
        .select(['state', 'desired_state', (eb) => eb.fn.countAll<number>().as('n')])
        .groupBy(['state', 'desired_state'])
        .execute();
      this.reset();
      for (const r of rows) this.set({ state: r.state, desired: r.desired_state }, Number(r.n));
    },
  });
  // One read of the hosts table per scrape fills every host gauge: each gauge's collect waits for
  // the same read (a scrape collects all metrics at once).
  let reading: Promise<void> | undefined;
  const readHosts = () =>
    (reading ??= (async () => {
      const rows = await db.selectFrom('hosts').selectAll().execute();
      for (const g of [hosts, capacity, allocated, healthy, draining, lag]) g.reset();
      const since = healthySince(config);
      hosts.set(rows.length);
      for (const h of rows) {
        const host = h.name;
        capacity.set({ host, resource: 'vcpus' }, h.cap_vcpus);
        capacity.set({ host, resource: 'memory_mib' }, h.cap_memory_mib);
        capacity.set({ host, resource: 'disk_mib' }, h.cap_disk_mib);
        allocated.set({ host, resource: 'vcpus' }, h.alloc_vcpus);
        allocated.set({ host, resource: 'memory_mib' }, h.alloc_memory_mib);
        allocated.set({ host, resource: 'disk_mib' }, h.alloc_disk_mib);
        healthy.set({ host }, isHealthy(h, since) ? 1 : 0);
        draining.set({ host }, h.draining);
        if (h.last_heartbeat_at) lag.set({ host }, (Date.now() - Date.parse(h.last_heartbeat_at)) / 1000);
      }
    })().finally(() => {
      reading = undefined;
    }));
  const hostGauge = (name: string, help: string, labelNames: string[]) =>
    new Gauge({ name, help, labelNames, registers, collect: readHosts });
  const hosts = hostGauge('warren_hosts', 'Hosts joined to this control plane', []);
  const capacity = hostGauge(
    'warren_host_capacity',
    'What a host offers tenants, by resource (vcpus, memory_mib, disk_mib)',
    ['host', 'resource'],
  );
  const allocated = hostGauge(
    'warren_host_allocated',
    'What tenants placed on a host have booked, by resource (suspended tenants included)',
    ['host', 'resource'],
  );
  const healthy = hostGauge('warren_host_healthy', '1 when the host heartbeats in time and reports ok', [
    'host',
  ]);
  const draining = hostGauge('warren_host_draining', '1 when the host gets no new tenants', ['host']);
  const lag = hostGauge(
    'warren_host_heartbeat_lag_seconds',
    'Seconds since the host last heartbeat (unhealthy past WARREN_HEARTBEAT_TIMEOUT_MS)',
    ['host'],
  );
  new Gauge({
    name: 'warren_operations_running',
    help: 'Operations not ended yet, by kind',
    labelNames: ['kind'],
    registers,
    async collect() {
      const rows = await db
        .selectFrom('operations')
        .select(['kind', (eb) => eb.fn.countAll<number>().as('n')])
        .where('status', '=', 'running')
        .groupBy('kind')
        .execute();
      this.reset();
      for (const r of rows) this.set({ kind: r.kind }, Number(r.n));
    },
  });
  new Gauge({
    name: 'warren_event_subscribers',
    help: 'Open GET /v1/events streams',
    registers,
    collect() {
      this.set(hub.subscriberCount);
    },
  });
  new Counter({
    name: 'warren_event_subscribers_dropped_total',
    help: 'Event streams closed because their client fell WARREN_EVENTS_CLIENT_QUEUE events behind',
    registers,
    collect() {
      this.reset();
      this.inc(hub.droppedTotal);
    },
  });
  return {
    registry,
    execs: new Counter({
      name: 'warren_exec_total',
      help: 'Exec requests relayed to tenant VMs, by result (ok, or the error code)',
      labelNames: ['result'],
      registers,
    }),
    dashboardBytes: new Counter({
      name: 'warren_dashboard_proxy_bytes_total',
      help: 'Bytes through the dashboard proxy: in (client to VM) and out (VM to client), WebSocket tunnels included',
      labelNames: ['direction'],
      registers,
    }),
    reportedErrors: new Counter({
      name: 'warren_reconcile_errors_total',
      help: 'Tenant VMs their host reported entering failed, crashed or unhealthy, by error code',
      labelNames: ['code'],
      registers,
    }),
  };
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * `GET /metrics` (Prometheus text format): the admin token or WARREN_METRICS_TOKEN. No
 * credential or an unknown one is 401; any other valid credential (a tenant key, a host token)
 * is 403. Not in the /v1 API (Prometheus expects this path), so declared here and not with `route()`.
 */
export function registerMetricsRoute(
  app: FastifyInstance,
  deps: { db: Db; config: ControlPlaneConfig; metrics: ControlPlaneMetrics },
): void {
  const metricsToken = deps.config.metricsToken ? digest(deps.config.metricsToken) : undefined;
  app.get('/metrics', async (req, reply) => {
    const m = /^Bearer (\S+)$/i.exec(req.headers.authorization ?? '');
    const presented = m?.[1];
    const isMetricsToken =
      presented !== undefined &&
      metricsToken !== undefined &&
      timingSafeEqual(digest(presented), metricsToken);
    if (!isMetricsToken) {
      const principal = await authenticate(deps.db, req.headers.authorization);
      if (principal.kind !== 'admin' || principal.onlyTenantId !== undefined)
        throw new WarrenError('FORBIDDEN', '/metrics needs the admin token or WARREN_METRICS_TOKEN');
    }
    const body = await deps.metrics.registry.metrics();
    return reply.header('content-type', deps.metrics.registry.contentType).send(body);
  });
}
