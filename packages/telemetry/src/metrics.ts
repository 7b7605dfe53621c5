/**
 * Prometheus metrics (prom-client). Each daemon has its own Registry (never prom-client's global
 * one), so tests may run several daemons in one process, each with its own numbers.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';

export { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Seconds: API calls are milliseconds; exec and file streams may take minutes. */
export const HTTP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export function createRegistry(): Registry {
  const registry = new Registry();
  // process_* and nodejs_* (CPU, memory, event-loop lag, handles) of the daemon itself.
  collectDefaultMetrics({ register: registry, prefix: 'warren_' });
  return registry;
}

/**
 * `warren_http_requests_total` and `warren_http_request_duration_seconds` by method, route
 * (the route's pattern, never the raw path: a path holds tenant names and would make one series
 * per name) and status.
 */
export function instrumentHttp(app: FastifyInstance, registry: Registry): void {
  const labelNames = ['method', 'route', 'status'] as const;
  // An app made again on the same registry (an agent reconnecting) counts into the same series.
  const requests =
    (registry.getSingleMetric('warren_http_requests_total') as
      | Counter<(typeof labelNames)[number]>
      | undefined) ??
    new Counter({
      name: 'warren_http_requests_total',
      help: 'HTTP requests answered, by method, route pattern and status',
      labelNames,
      registers: [registry],
    });
  const duration =
    (registry.getSingleMetric('warren_http_request_duration_seconds') as
      | Histogram<(typeof labelNames)[number]>
      | undefined) ??
    new Histogram({
      name: 'warren_http_request_duration_seconds',
      help: 'HTTP request latency until the response ended, by method, route pattern and status',
      labelNames,
      buckets: HTTP_BUCKETS,
      registers: [registry],
    });
  const counted = new WeakSet<object>();
  const count = (req: FastifyRequest, status: number, seconds: number) => {
    if (counted.has(req)) return;
    counted.add(req);
    const labels = {
      method: req.method,
      route: req.routeOptions?.url ?? 'unmatched',
      status: String(status),
    };
    requests.inc(labels);
    duration.observe(labels, seconds);
  };
  app.addHook('onResponse', async (req, reply) => count(req, reply.statusCode, reply.elapsedTime / 1000));
  // A route that takes over its response (reply.hijack(): streams, proxies) has no onResponse:
  // it is counted when its response closes.
  app.addHook('onRequest', async (req, reply) => {
    reply.raw.once('close', () =>
      setImmediate(() => count(req, reply.raw.statusCode, reply.elapsedTime / 1000)),
    );
  });
}

/** The content type of `/metrics` (Prometheus text exposition format 0.0.4). */
export function metricsContentType(registry: Registry): string {
  return registry.contentType;
}
