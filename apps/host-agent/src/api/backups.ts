/**
 * Backup and restore routes, shared by the local and the remote API (`check` decides which VM
 * ids a caller may name). The request bodies carry keys: they are parsed and handed to the
 * job, never logged or kept beyond it (the APIs run without a logger).
 */
import { BackupId, HostBackupRequest, HostRestoreRequest, parseOrThrow } from '@warren/protocol';
import type { FastifyInstance } from 'fastify';
import type { BackupJobs } from '../backup/backup-jobs.ts';

type Params = { id: string };

export function registerBackupRoutes(
  app: FastifyInstance,
  jobs: BackupJobs,
  check: (id: string) => void,
): void {
  app.post<{ Params: Params }>('/v1/vms/:id/backups', async (req, reply) => {
    check(req.params.id);
    const body = parseOrThrow(HostBackupRequest, req.body ?? {});
    return reply.status(202).send(await jobs.startBackup(req.params.id, body));
  });
  app.post<{ Params: Params }>('/v1/vms/:id/restore', async (req, reply) => {
    check(req.params.id);
    const body = parseOrThrow(HostRestoreRequest, req.body ?? {});
    return reply.status(202).send(await jobs.startRestore(req.params.id, body));
  });
  app.get<{ Params: Params }>('/v1/backup-jobs/:id', async (req) =>
    jobs.get(parseOrThrow(BackupId, req.params.id), check),
  );
}
