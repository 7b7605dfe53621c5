import { PassThrough, Readable, Transform } from 'node:stream';
import {
  EXEC_CONTENT_TYPE,
  FileQuery,
  FileWritten,
  TenantExecRequest,
  TerminalQuery,
  TerminalResize,
  vmIdOfTenant,
  WarrenError,
} from '@warren/protocol';
import { type WebSocket, WebSocketServer } from 'ws';
import { TelnetDecoder, telnetData, telnetWindowSize } from '../../agents/telnet.ts';
import type { TenantsTable } from '../../store/database.ts';
import type { Api } from '../context.ts';
import { takeUpgrade } from '../upgrade.ts';

/**
 * Exec and files: forwarded to the tenant's host agent, which talks to the guest agent. A
 * suspended tenant's calls are forwarded too: its host wakes the VM first.
 */
export function guestRoutes(api: Api): void {
  const runningOn = (tenant: TenantsTable) => api.hosts.runningHostOf(tenant);
  terminalRoute(api);

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

/** Output waiting for a slow browser: beyond this many unsent messages the shell's output waits. */
const TERMINAL_MAX_PENDING = 64;
/** Input the guest has not taken yet: a client that pastes more than this is cut off. */
const TERMINAL_MAX_INPUT_BYTES = 1024 * 1024;

const terminalSockets = new WebSocketServer({ noServer: true, maxPayload: 256 * 1024 });

/**
 * `GET /v1/tenants/{t}/terminal`, a WebSocket: an interactive shell on a PTY in the tenant's VM
 * (the host agent's `POST /v1/vms/{id}/terminal`, which speaks telnet framing; agents/telnet.ts
 * translates). Counted as an exec stream of the tenant while it is open.
 */
export function terminalRoute(api: Api): void {
  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/terminal',
      auth: 'tenant',
      summary:
        "An interactive shell in the tenant's VM over a WebSocket (binary: terminal bytes; text: {resize: {cols, rows}})",
      query: TerminalQuery,
      response: { status: 101 },
      audit: 'tenant.terminal',
    },
    async ({ tenant, query, req, reply }) => {
      const upgrade = takeUpgrade(req.raw);
      if (!upgrade) throw new WarrenError('INVALID_ARGUMENT', 'open the terminal as a WebSocket');
      const host = await api.hosts.runningHostOf(tenant!);
      api.streams.hold(tenant!, 'exec', upgrade.socket);
      const input = new PassThrough();
      input.write(telnetWindowSize(query.cols, query.rows));
      const abort = new AbortController();
      upgrade.socket.once('close', () => abort.abort());
      const res = await api.agents.request(host, 'POST', `/v1/vms/${vmIdOfTenant(tenant!.id)}/terminal`, {
        body: input,
        contentType: 'application/octet-stream',
        signal: abort.signal,
        timeoutMs: api.config.terminalMaxMs + api.hosts.wakeSlackMs(tenant!),
      });
      reply.hijack();
      terminalSockets.handleUpgrade(req.raw, upgrade.socket, upgrade.head, (ws) => {
        bridgeTerminal(ws, input, Readable.fromWeb(res.body as never), abort);
      });
    },
  );
}

function bridgeTerminal(ws: WebSocket, input: PassThrough, output: Readable, abort: AbortController): void {
  const decoder = new TelnetDecoder();
  let pending = 0;
  const finish = (message: unknown) => {
    if (ws.readyState === ws.OPEN) {
      ws.send(JSON.stringify(message));
      ws.close(1000);
    }
    abort.abort();
  };
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    if (isBinary) input.write(telnetData(data));
    else {
      let parsed: unknown;
      try {
        parsed = JSON.parse(data.toString('utf8'));
      } catch {}
      const m = TerminalResize.safeParse(parsed);
      if (m.success) input.write(telnetWindowSize(m.data.resize.cols, m.data.resize.rows));
    }
    if (input.writableLength > TERMINAL_MAX_INPUT_BYTES) {
      finish(
        new WarrenError(
          'PAYLOAD_TOO_LARGE',
          'the terminal input is not being read: send less at once',
        ).toBody(),
      );
    }
  });
  ws.on('close', () => {
    input.end();
    abort.abort();
  });
  ws.on('error', () => abort.abort());
  output.on('data', (chunk: Buffer) => {
    const bytes = decoder.push(chunk);
    if (bytes.length === 0 || ws.readyState !== ws.OPEN) return;
    pending++;
    // A slow browser holds the shell's output back (through the host agent, to the guest).
    if (pending >= TERMINAL_MAX_PENDING) output.pause();
    ws.send(bytes, { binary: true }, () => {
      pending--;
      if (pending < TERMINAL_MAX_PENDING / 4) output.resume();
    });
  });
  output.on('end', () => finish({ exit: {} }));
  output.on('error', (e) => {
    if (!abort.signal.aborted)
      finish(new WarrenError('HOST_UNAVAILABLE', `the terminal was cut: ${e.message}`).toBody());
  });
}
