/**
 * What the local API (unix socket) and the remote API (control plane, TCP) share: error
 * bodies, the NDJSON exec stream and the file routes. Each API decides which VM ids a
 * caller may name through `guestOf`.
 */
import { Readable, type Writable } from 'node:stream';
import { EXEC_CONTENT_TYPE, FileQuery, parseOrThrow, TenantExecRequest, WarrenError } from '@warren/protocol';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { GuestClient } from '../guest/guest-client.ts';

export type GuestOf = (id: string) => Promise<GuestClient>;

/** Every error leaves as the protocol's ErrorBody with its registered status. */
export function useWarrenErrors(app: FastifyInstance): void {
  app.setErrorHandler((error, _req, reply) => {
    const err = error as Error & { statusCode?: number; code?: string };
    const e =
      err instanceof WarrenError
        ? err
        : err.code === 'FST_ERR_CTP_BODY_TOO_LARGE'
          ? new WarrenError('PAYLOAD_TOO_LARGE', err.message)
          : err.statusCode && err.statusCode < 500
            ? new WarrenError('INVALID_ARGUMENT', err.message)
            : new WarrenError('INTERNAL', err.message);
    void reply.status(e.status).send(e.toBody());
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new WarrenError('NOT_FOUND', `no route ${req.method} ${req.url}`);
    void reply.status(404).send(e.toBody());
  });
}

/**
 * Runs a command in the guest and streams NDJSON: `{"stdout": base64}`, `{"stderr": base64}`,
 * then `{"exit": {...}}` or `{"error": {...}}`. Errors before the command starts (bad body,
 * VM not running) are ordinary error replies; after the 200 they can only be a last line.
 */
async function streamExec(guestOf: GuestOf, id: string, body: unknown, reply: FastifyReply) {
  const { stdin, ...spec } = parseOrThrow(TenantExecRequest, body);
  const guest = await guestOf(id);
  reply.hijack();
  reply.raw.writeHead(200, { 'content-type': EXEC_CONTENT_TYPE });
  // Sent now, not with the first output: a quiet command has started too.
  reply.raw.flushHeaders();
  const out = reply.raw;
  // A full reply buffer (a slow or stalled reader) holds the command's output in the guest.
  const line = (v: unknown): Promise<void> | undefined =>
    out.write(`${JSON.stringify(v)}\n`) || out.destroyed ? undefined : drained(out);
  const abort = new AbortController();
  // The caller going away kills the command in the guest.
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
}

function drained(out: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      out.off('drain', done);
      out.off('close', done);
      resolve();
    };
    out.on('drain', done);
    out.on('close', done);
  });
}

export interface GuestRouteOptions {
  /**
   * Exec and file streams one VM may have open at once; unlimited when absent (the local API,
   * which only root reaches). Every stream holds memory and a guest process, so a flood of them
   * through the remote API, from many clients or a compromised control plane, is refused.
   */
  maxStreamsPerVm?: number;
}

/** The routes both APIs serve for a VM's guest: health, exec and files. */
export function registerGuestRoutes(
  app: FastifyInstance,
  guestOf: GuestOf,
  options: GuestRouteOptions = {},
): void {
  const slots = streamSlots(options.maxStreamsPerVm);
  app.get<{ Params: { id: string } }>('/v1/vms/:id/health', async (req) =>
    (await guestOf(req.params.id)).health(),
  );
  app.post<{ Params: { id: string } }>('/v1/vms/:id/exec', async (req, reply) => {
    slots(req.params.id, reply);
    return streamExec(guestOf, req.params.id, req.body, reply);
  });
  app.post<{ Params: { id: string } }>('/v1/vms/:id/terminal', async (req, reply) => {
    slots(req.params.id, reply);
    return streamTerminal(guestOf, req.params.id, req.body, reply);
  });
  registerFileRoutes(app, guestOf, slots);
}

/**
 * An interactive shell on a pseudo-terminal in the guest, for the console's terminal. Node has
 * no PTY of its own, so the guest's busybox `telnetd` in inetd mode allocates one and runs the
 * shell on it, speaking telnet on the exec's stdin and stdout: the request body is the
 * terminal's input and the response body its output, both in telnet's framing (0xFF doubled;
 * the window size as a NAWS subnegotiation), which the control plane translates to and from
 * its WebSocket. Ctrl-C is the byte 0x03, which the guest's line discipline turns into SIGINT.
 * Closing the request kills the shell and everything it started.
 */
export const TERMINAL_ARGV = ['/usr/lib/warren/busybox', 'telnetd', '-i', '-f', '/dev/null', '-l', '/bin/sh'];

async function streamTerminal(guestOf: GuestOf, id: string, body: unknown, reply: FastifyReply) {
  if (!(body instanceof Readable)) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      "send the terminal's input as an application/octet-stream body",
    );
  }
  const guest = await guestOf(id);
  reply.hijack();
  reply.raw.writeHead(200, { 'content-type': 'application/octet-stream' });
  reply.raw.flushHeaders();
  const out = reply.raw;
  const abort = new AbortController();
  reply.raw.on('close', () => abort.abort());
  const write = (b: Buffer): Promise<void> | undefined =>
    out.write(b) || out.destroyed ? undefined : drained(out);
  try {
    await guest.exec(
      { argv: TERMINAL_ARGV, env: { TERM: 'xterm-256color' } },
      { stdin: body, onStdout: write, onStderr: write, signal: abort.signal },
    );
  } catch {
    // The shell's end, however it came, ends the response; the console says the session ended.
  }
  out.end();
}

type TakeSlot = (vmId: string, reply: FastifyReply) => void;

/** Counts open streams per VM; a slot is given back when its reply closes, however it ends. */
function streamSlots(max: number | undefined): TakeSlot {
  const open = new Map<string, number>();
  return (vmId, reply) => {
    if (max === undefined) return;
    const n = open.get(vmId) ?? 0;
    if (n >= max) {
      throw new WarrenError(
        'TOO_MANY_STREAMS',
        `VM ${vmId} already has ${n} exec and file streams open, the most this host allows (WARREN_MAX_STREAMS_PER_VM)`,
        { details: { kind: 'vm', limit: max } },
      );
    }
    open.set(vmId, n + 1);
    reply.raw.once('close', () => {
      const left = (open.get(vmId) ?? 1) - 1;
      if (left > 0) open.set(vmId, left);
      else open.delete(vmId);
    });
  };
}

/**
 * `PUT /v1/vms/:id/files?path=` streams an `application/octet-stream` body into the guest;
 * `GET` streams the file back. Bodies are never buffered, so their size is the guest's
 * disk's business, not the agent's memory's.
 */
function registerFileRoutes(app: FastifyInstance, guestOf: GuestOf, slots: TakeSlot): void {
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
  app.put<{ Params: { id: string } }>('/v1/vms/:id/files', async (req, reply) => {
    const { path } = parseOrThrow(FileQuery, req.query);
    slots(req.params.id, reply);
    const guest = await guestOf(req.params.id);
    const body = req.body instanceof Readable ? req.body : Readable.from([]);
    if (req.body !== undefined && !(req.body instanceof Readable))
      throw new WarrenError('INVALID_ARGUMENT', 'send the file as application/octet-stream');
    const written = await guest.writeFile(path, body);
    return reply.status(201).send({ path, bytes: written.size });
  });
  app.get<{ Params: { id: string } }>('/v1/vms/:id/files', async (req, reply) => {
    const { path } = parseOrThrow(FileQuery, req.query);
    slots(req.params.id, reply);
    const guest = await guestOf(req.params.id);
    const stream = await guest.readFile(path);
    return reply.type('application/octet-stream').send(stream);
  });
}
