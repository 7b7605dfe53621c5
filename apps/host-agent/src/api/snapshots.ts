/**
 * Snapshot and credential routes, shared by the local and the remote API. Each API decides
 * which VM ids a caller may name through `check`.
 */
import { CreateSnapshotRequest, Credentials, parseOrThrow, SnapshotName } from '@warren/protocol';
import type { FastifyInstance } from 'fastify';
import type { VmManager } from '../vm/vm-manager.ts';

type Params = { id: string; name: string };

export function registerSnapshotRoutes(
  app: FastifyInstance,
  vms: VmManager,
  check: (id: string) => void,
): void {
  const name = (p: Params) => parseOrThrow(SnapshotName, p.name);
  app.get<{ Params: Params }>('/v1/vms/:id/snapshots', async (req) => {
    check(req.params.id);
    return { snapshots: await vms.snapshots(req.params.id) };
  });
  app.post<{ Params: Params }>('/v1/vms/:id/snapshots', async (req, reply) => {
    check(req.params.id);
    const body = parseOrThrow(CreateSnapshotRequest, req.body ?? {});
    return reply.status(201).send(await vms.createSnapshot(req.params.id, body));
  });
  app.post<{ Params: Params }>('/v1/vms/:id/snapshots/:name/revert', async (req) => {
    check(req.params.id);
    return vms.revertSnapshot(req.params.id, name(req.params));
  });
  app.get<{ Params: Params }>('/v1/vms/:id/snapshots/:name/changes', async (req) => {
    check(req.params.id);
    return vms.changedFiles(req.params.id, name(req.params));
  });
  app.delete<{ Params: Params }>('/v1/vms/:id/snapshots/:name', async (req, reply) => {
    check(req.params.id);
    await vms.deleteSnapshot(req.params.id, name(req.params));
    return reply.status(204).send();
  });
  // The body holds secrets: it is parsed and handed on, never logged or kept (the APIs run without a logger).
  app.put<{ Params: Params }>('/v1/vms/:id/credentials', async (req, reply) => {
    check(req.params.id);
    await vms.putCredentials(req.params.id, parseOrThrow(Credentials, req.body ?? {}));
    return reply.status(204).send();
  });
  app.delete<{ Params: Params }>('/v1/vms/:id/credentials', async (req, reply) => {
    check(req.params.id);
    await vms.wipeCredentials(req.params.id);
    return reply.status(204).send();
  });
}
