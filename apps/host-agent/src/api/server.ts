import { EXEC_CONTENT_TYPE, ImageBuildRequest, parseOrThrow, WarrenError } from '@warren/protocol';
import { logHandedOverRequests } from '@warren/telemetry';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Host } from '../host.ts';
import { buildHostImage } from '../images.ts';
import { registerHostMetricsRoute } from '../metrics.ts';
import { registerBackupRoutes } from './backups.ts';
import { registerGuestRoutes, useWarrenErrors } from './common.ts';
import { fastifyLogging } from './logging.ts';
import { registerSnapshotRoutes } from './snapshots.ts';

/**
 * The host agent's local API, served on a root-only unix socket, for operators and tests.
 * It may touch every VM; the control plane uses the remote API (remote.ts) instead.
 */
export function createApi(host: Host): FastifyInstance {
  const app = Fastify({ ...fastifyLogging(host.logger), bodyLimit: 16 * 1024 * 1024 });
  useWarrenErrors(app);
  if (host.logger) logHandedOverRequests(app);
  const guestOf = (id: string) => host.vms.guest(id);
  // The socket is root's alone: whoever reaches it may read metrics.
  if (host.metrics) registerHostMetricsRoute(app, host.metrics);

  app.get('/v1/host', async () => ({
    accelerator: host.accel,
    cgroups: host.cgroups,
    vmm: { name: host.vms.vmm.name, capabilities: host.vms.vmm.capabilities },
    dataDir: host.config.dataDir,
    pid: process.pid,
  }));
  app.get('/v1/images', async () => ({ images: await host.store.list() }));
  /**
   * Builds an image (or finds its recipe cached) and streams NDJSON: `{"progress": {...}}` per
   * step, then `{"result": {...}}` or `{"error": {...}}`. A caller that leaves does not stop the
   * build: it finishes into the store, and the next build of that recipe is a cache hit.
   */
  app.post('/v1/images/build', async (req, reply) => {
    const request = parseOrThrow(ImageBuildRequest, req.body ?? {});
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': EXEC_CONTENT_TYPE });
    const line = (v: unknown) => {
      if (!reply.raw.destroyed) reply.raw.write(`${JSON.stringify(v)}\n`);
    };
    try {
      const result = await buildHostImage(host.config, host.store, {
        ...request,
        onProgress: (progress) => line({ progress }),
      });
      line({ result });
    } catch (e) {
      line(e instanceof WarrenError ? e.toBody() : new WarrenError('INTERNAL', String(e)).toBody());
    }
    reply.raw.end();
  });
  app.get('/v1/vms', async () => ({ vms: await host.vms.list() }));
  app.post('/v1/vms', async (req, reply) => reply.status(201).send(await host.vms.create(req.body as never)));
  app.get<{ Params: { id: string } }>('/v1/vms/:id', async (req) => host.vms.get(req.params.id));
  app.post<{ Params: { id: string } }>('/v1/vms/:id/start', async (req) => host.vms.start(req.params.id));
  app.post<{ Params: { id: string } }>('/v1/vms/:id/stop', async (req) => host.vms.stop(req.params.id));
  app.post<{ Params: { id: string } }>('/v1/vms/:id/kill', async (req) => host.vms.kill(req.params.id));
  app.delete<{ Params: { id: string } }>('/v1/vms/:id', async (req, reply) => {
    await host.vms.destroy(req.params.id);
    return reply.status(204).send();
  });
  registerGuestRoutes(app, guestOf);
  registerSnapshotRoutes(app, host.vms, () => {});
  registerBackupRoutes(app, host.backups, () => {});
  return app;
}
