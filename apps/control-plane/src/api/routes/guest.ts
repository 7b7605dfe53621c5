import { Readable, Transform } from 'node:stream';
import {
  EXEC_CONTENT_TYPE,
  FileQuery,
  FileWritten,
  TenantExecRequest,
  vmIdOfTenant,
  WarrenError,
} from '@warren/protocol';
import type { TenantsTable } from '../../store/database.ts';
import type { Api } from '../context.ts';

/**
 * Exec and files: forwarded to the tenant's host agent, which talks to the guest agent. A
 * suspended tenant's calls are forwarded too: its host wakes the VM first.
 */
export function guestRoutes(api: Api): void {
  const runningOn = (tenant: TenantsTable) => api.hosts.runningHostOf(tenant);

  api.route(
    {
      method: 'POST',
      url: '/v1/tenants/:tenant/exec',
      auth: 'tenant',
      summary: "Run a command in the tenant's VM; streams NDJSON lines of stdout, stderr and finally exit",
      body: TenantExecRequest,
      // stdin travels base64 in the JSON body: up to 8 MiB of it, a third more when encoded.
      bodyLimit: 12 * 1024 * 1024,
      response: { status: 200, contentType: EXEC_CONTENT_TYPE },
      audit: 'tenant.exec',
    },
    async ({ tenant, body, req, reply }) => {
      let res: Response;
      try {
        const host = await runningOn(tenant!);
        // Counted until the reply is done or its client gone, whichever way the exec ends.
        api.streams.hold(tenant!, 'exec', reply.raw);
        const abort = new AbortController();
        req.raw.on('close', () => abort.abort());
        res = await api.agents.request(host, 'POST', `/v1/vms/${vmIdOfTenant(tenant!.id)}/exec`, {
          body: JSON.stringify(body),
          contentType: 'application/json',
          signal: abort.signal,
          // The command's own timeout ends it in the guest; this only bounds a lost agent (and,
          // while the tenant is suspended, the wake before the command starts).
          timeoutMs: (body.timeoutMs ?? 24 * 3600_000) + 60_000 + api.hosts.wakeSlackMs(tenant!),
        });
      } catch (e) {
        api.metrics.execs.inc({ result: e instanceof WarrenError ? e.code : 'INTERNAL' });
        throw e;
      }
      // Relayed: the host agent took it (how the command ends is in its stream).
      api.metrics.execs.inc({ result: 'ok' });
      reply.header('content-type', EXEC_CONTENT_TYPE);
      return reply.status(200).send(Readable.fromWeb(res.body as never));
    },
  );

  api.route(
    {
      method: 'PUT',
      url: '/v1/tenants/:tenant/files',
      auth: 'tenant',
      summary: "Write a file into the tenant's VM (body: the bytes, application/octet-stream)",
      query: FileQuery,
      streamBody: true,
      response: { status: 201, schema: FileWritten },
      audit: 'tenant.files.write',
    },
    async ({ tenant, query, req, audit }) => {
      audit.target = `${tenant!.name}:${query.path}`;
      if (!(req.body instanceof Readable)) {
        throw new WarrenError(
          'INVALID_ARGUMENT',
          'send the file as the body with content-type application/octet-stream',
        );
      }
      const host = await runningOn(tenant!);
      const limit = api.config.uploadLimitBytes;
      let seen = 0;
      const counted = req.body.pipe(
        new Transform({
          transform(chunk: Buffer, _enc, done) {
            seen += chunk.length;
            if (seen > limit)
              done(new WarrenError('PAYLOAD_TOO_LARGE', `uploads are limited to ${limit} bytes`));
            else done(null, chunk);
          },
        }),
      );
      let tooLarge: unknown;
      counted.on('error', (e) => {
        tooLarge = e;
      });
      try {
        const res = await api.agents.request(
          host,
          'PUT',
          `/v1/vms/${vmIdOfTenant(tenant!.id)}/files?path=${encodeURIComponent(query.path)}`,
          { body: counted, contentType: 'application/octet-stream', timeoutMs: 3600_000 },
        );
        return FileWritten.parse(await res.json());
      } catch (e) {
        throw tooLarge ?? e;
      }
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/files',
      auth: 'tenant',
      summary: "Read a file from the tenant's VM (streamed as application/octet-stream)",
      query: FileQuery,
      response: { status: 200, contentType: 'application/octet-stream' },
    },
    async ({ tenant, query, reply }) => {
      const host = await runningOn(tenant!);
      const res = await api.agents.request(
        host,
        'GET',
        `/v1/vms/${vmIdOfTenant(tenant!.id)}/files?path=${encodeURIComponent(query.path)}`,
        { timeoutMs: 3600_000 },
      );
      reply.header('content-type', 'application/octet-stream');
      return reply.status(200).send(Readable.fromWeb(res.body as never));
    },
  );
}
