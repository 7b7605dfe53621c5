import { WarrenError } from '@warren/protocol';
import Fastify, { type FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { Host } from '../host.ts';

const ExecBody = z.strictObject({
  argv: z.array(z.string()).min(1),
  env: z.record(z.string(), z.string()).optional(),
  cwd: z.string().optional(),
  user: z.union([z.string(), z.number()]).optional(),
  timeoutMs: z.number().int().positive().optional(),
  /** Base64 bytes for stdin; absent means /dev/null. */
  stdin: z.string().optional(),
});

/**
 * The host agent's local API, served on a root-only unix socket. The control plane will
 * drive hosts through the same operations; for now it is used by operators and tests.
 */
export function createApi(host: Host): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: 16 * 1024 * 1024 });

  app.setErrorHandler((error, _req, reply) => {
    const err = error as Error & { statusCode?: number };
    const e =
      err instanceof WarrenError
        ? err
        : err.statusCode && err.statusCode < 500
          ? new WarrenError('INVALID_ARGUMENT', err.message)
          : new WarrenError('INTERNAL', err.message);
    void reply.status(e.status).send(e.toBody());
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new WarrenError('NOT_FOUND', `no route ${req.method} ${req.url}`);
    void reply.status(404).send(e.toBody());
  });

  app.get('/v1/host', async () => ({
    accelerator: host.accel,
    cgroups: host.cgroups,
    dataDir: host.config.dataDir,
    pid: process.pid,
  }));
  app.get('/v1/images', async () => ({ images: await host.store.list() }));
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
  app.get<{ Params: { id: string } }>('/v1/vms/:id/health', async (req) =>
    (await host.vms.guest(req.params.id)).health(),
  );

  /** Streams NDJSON: `{"stdout": base64}`, `{"stderr": base64}`, then `{"exit": {...}}` or `{"error": {...}}`. */
  app.post<{ Params: { id: string } }>('/v1/vms/:id/exec', async (req, reply) => {
    const parsed = ExecBody.safeParse(req.body);
    if (!parsed.success)
      throw new WarrenError('INVALID_ARGUMENT', parsed.error.issues[0]?.message ?? 'bad exec body');
    const { stdin, ...spec } = parsed.data;
    const guest = await host.vms.guest(req.params.id);
    reply.raw.writeHead(200, { 'content-type': 'application/x-ndjson' });
    const line = (v: unknown) => reply.raw.write(`${JSON.stringify(v)}\n`);
    const abort = new AbortController();
    reply.raw.on('close', () => abort.abort());
    try {
      const exit = await guest.exec(spec, {
        ...(stdin === undefined ? {} : { stdin: Buffer.from(stdin, 'base64') }),
        onStdout: (b) => line({ stdout: b.toString('base64') }),
        onStderr: (b) => line({ stderr: b.toString('base64') }),
        signal: abort.signal,
      });
      line({ exit });
    } catch (e) {
      line(e instanceof WarrenError ? e.toBody() : new WarrenError('INTERNAL', String(e)).toBody());
    }
    reply.raw.end();
    return reply;
  });
  return app;
}
