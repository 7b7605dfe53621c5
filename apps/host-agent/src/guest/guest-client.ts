import { randomBytes } from 'node:crypto';
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type ExecExit,
  ExecExit as ExecExitSchema,
  type ExecRequest,
  encodeFrame,
  FileList,
  FileStat,
  FrameDecoder,
  FrameType,
  type FreezeRequest,
  FreezeResult,
  GUEST_ROUTES,
  type GuestCredentials,
  type GuestSecrets,
  Health,
  type IdentityRequest,
  IdentityResult,
  MAX_FRAME_PAYLOAD,
  MAX_GUEST_JSON_BYTES,
  type MkdirRequest,
  PlacedSecrets,
  parseOrThrow,
  type RemoveRequest,
  type RestoredRequest,
  type RestoredResult,
  RestoredResult as RestoredResultSchema,
  ThawResult,
  WarrenError,
  WipedCredentials,
  WriteResult,
} from '@warren/protocol';
import type { z } from 'zod';
import type { GuestTransport } from './transport.ts';

/**
 * Receives one chunk of a command's output. Returning a promise holds the rest of the output
 * in the guest until it settles: that is how a slow reader's backpressure reaches the command
 * (through HTTP/2 flow control), so the host holds at most one stream window per exec.
 */
export type OutputSink = (chunk: Buffer) => unknown;

export interface ExecOptions {
  /** Data for the command's stdin; when absent stdin is /dev/null. */
  stdin?: Readable | Buffer | string;
  onStdout?: OutputSink;
  onStderr?: OutputSink;
  /** Aborting kills the command in the guest. */
  signal?: AbortSignal;
}

export interface ExecResult extends ExecExit {}

/** Extra time the host waits beyond an exec's own timeout before giving up on the guest. */
const HOST_TIMEOUT_GRACE_MS = 10_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/** Pause before a new connection when a handshake was cut (the guest needs a moment to see the end). */
const HANDSHAKE_RETRY_PAUSE_MS = 100;
const MiB = 1024 * 1024;

/**
 * The host's client of one guest agent: one HTTP/2 session over a transport.
 *
 * Everything the guest sends is untrusted: JSON bodies are size-capped and schema-checked,
 * exec frames are length-checked before they are buffered, and every call has a deadline,
 * so a hostile or hung guest can only fail its own requests.
 */
export class GuestClient {
  readonly #session: ClientHttp2Session;

  private constructor(session: ClientHttp2Session) {
    this.#session = session;
  }

  /**
   * Connects and completes the HTTP/2 handshake both ways: the guest's SETTINGS arrived, and
   * the guest acknowledged ours, which proves our preface reached a fresh session.
   *
   * The channel gives the guest no reliable sign of where one host connection ends and the
   * next begins (docs/architecture.md, "Host ⇄ guest channel"): a connection made right after
   * another host vanished can still meet the dead host's session, which then ends it. That
   * connection is lost, but it marks the boundary; a new one meets a fresh session. So a
   * handshake cut short is retried on a new connection until the deadline.
   */
  static async connect(transport: GuestTransport, timeoutMs = 10_000): Promise<GuestClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await GuestClient.#handshake(transport, Math.max(1, deadline - Date.now()));
      } catch (e) {
        if (!(e instanceof HandshakeCut) || Date.now() + HANDSHAKE_RETRY_PAUSE_MS >= deadline) throw e;
        await sleep(HANDSHAKE_RETRY_PAUSE_MS);
      }
    }
  }

  static async #handshake(transport: GuestTransport, timeoutMs: number): Promise<GuestClient> {
    const socket = await transport.connect(timeoutMs);
    const session = http2.connect('http://warren-guest', {
      createConnection: () => socket,
      maxSessionMemory: 64,
      maxHeaderListPairs: 64,
      // Large windows and frames: the channel has high latency under TCG, and 64 KiB
      // windows would stall every stream on WINDOW_UPDATE round trips.
      settings: {
        maxHeaderListSize: 64 * 1024,
        enablePush: false,
        initialWindowSize: 8 * MiB,
        maxFrameSize: MiB,
      },
    });
    session.on('error', () => {});
    // A session that the guest's first bytes already broke is destroyed by the time 'connect'
    // fires; setting its window would throw out of the event handler.
    session.on('connect', () => {
      if (!session.destroyed) session.setLocalWindowSize(32 * MiB);
    });
    await new Promise<void>((resolve, reject) => {
      let theirs = false;
      let ours = false;
      const done = () => {
        if (!theirs || !ours) return;
        clearTimeout(timer);
        session.off('close', onClose);
        resolve();
      };
      const timer = setTimeout(() => {
        session.off('close', onClose);
        session.destroy();
        reject(new WarrenError('GUEST_UNAVAILABLE', `guest agent did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const onClose = () => {
        clearTimeout(timer);
        reject(new HandshakeCut('GUEST_UNAVAILABLE', 'guest channel closed during the handshake'));
      };
      session.once('remoteSettings', () => {
        theirs = true;
        done();
      });
      session.once('localSettings', () => {
        ours = true;
        done();
      });
      session.once('close', onClose);
    });
    return new GuestClient(session);
  }

  get closed(): boolean {
    return this.#session.closed || this.#session.destroyed;
  }

  onClose(listener: () => void): void {
    this.#session.once('close', listener);
  }

  close(): void {
    this.#session.destroy();
  }

  health(timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS): Promise<Health> {
    return this.#json('GET', GUEST_ROUTES.health, Health, undefined, timeoutMs);
  }

  stat(path: string): Promise<FileStat> {
    return this.#json('GET', withPath(GUEST_ROUTES.fileStat, path), FileStat);
  }

  async list(path: string): Promise<FileStat[]> {
    return (await this.#json('GET', withPath(GUEST_ROUTES.fileList, path), FileList)).entries;
  }

  mkdir(req: MkdirRequest): Promise<FileStat> {
    return this.#json('POST', GUEST_ROUTES.mkdir, FileStat, req);
  }

  async remove(req: RemoveRequest): Promise<void> {
    await this.#json('POST', GUEST_ROUTES.remove, null, req);
  }

  async shutdown(action: 'poweroff' | 'reboot' = 'poweroff'): Promise<void> {
    await this.#json('POST', GUEST_ROUTES.shutdown, null, { action });
  }

  /** Tells a just-restored guest to set its clock to the host's and reseed its entropy pool. */
  restored(): Promise<RestoredResult> {
    return this.#json('POST', GUEST_ROUTES.restored, RestoredResultSchema, {
      unixMs: Date.now(),
      entropy: randomBytes(64).toString('base64'),
    } satisfies RestoredRequest);
  }

  /**
   * Makes a guest just restored from its image's template this tenant's (see IdentityRequest);
   * the clock and entropy are the host's now, as for `restored`.
   */
  identity(
    identity: Omit<IdentityRequest, 'unixMs' | 'entropy'>,
    timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
  ): Promise<IdentityResult> {
    return this.#json(
      'POST',
      GUEST_ROUTES.identity,
      IdentityResult,
      {
        ...identity,
        unixMs: Date.now(),
        entropy: randomBytes(64).toString('base64'),
      } satisfies IdentityRequest,
      timeoutMs,
    );
  }

  /** Freezes the guest's data volume (fsfreeze) until a thaw, or until `timeoutMs` has passed in the guest. */
  async freeze(timeoutMs: number): Promise<FreezeResult> {
    // The guest flushes the volume before it freezes; past its own deadline the freeze is moot.
    return this.#json(
      'POST',
      GUEST_ROUTES.freeze,
      FreezeResult,
      { timeoutMs } satisfies FreezeRequest,
      timeoutMs,
    );
  }

  /** Thaws the guest's data volume; false when it was not frozen. */
  async thaw(): Promise<boolean> {
    return (await this.#json('POST', GUEST_ROUTES.thaw, ThawResult, {})).thawed;
  }

  /** Places credentials in the guest's tmpfs (and environment for new commands). */
  async putCredentials(creds: GuestCredentials): Promise<void> {
    await this.#json('PUT', GUEST_ROUTES.credentials, WipedCredentials, creds);
  }

  /** Makes the guest's secrets tmpfs hold exactly these (replaced in place, others removed). */
  async putSecrets(secrets: GuestSecrets): Promise<PlacedSecrets> {
    return this.#json('PUT', GUEST_ROUTES.secrets, PlacedSecrets, secrets);
  }

  /**
   * Sends `bytes` of filler through the channel, so the guest kernel's receive buffers for it
   * (reused, never freed) no longer hold what earlier requests carried.
   */
  async scrub(bytes: number): Promise<void> {
    const stream = this.#request('PUT', GUEST_ROUTES.scrub, DEFAULT_REQUEST_TIMEOUT_MS);
    const chunk = Buffer.alloc(64 * 1024);
    for (let sent = 0; sent < bytes; sent += chunk.length) {
      if (!stream.write(chunk)) await new Promise((r) => stream.once('drain', r));
    }
    stream.end();
    const { headers, body } = await this.#response(stream);
    this.#parseJson(headers, body, null);
  }

  /** Wipes the guest's credentials; with `restart` the guest agent then restarts (see WipedCredentials). */
  wipeCredentials(restart: boolean): Promise<WipedCredentials> {
    return this.#json(
      'DELETE',
      `${GUEST_ROUTES.credentials}${restart ? '?restart=1' : ''}`,
      WipedCredentials,
    );
  }

  /** Streams `data` into a file in the guest, atomically replaced when complete. */
  async writeFile(
    path: string,
    data: Readable | Buffer | string,
    options: { mode?: number; parents?: boolean; timeoutMs?: number } = {},
  ): Promise<z.infer<typeof WriteResult>> {
    let route = withPath(GUEST_ROUTES.fileContent, path);
    if (options.mode !== undefined) route += `&mode=${options.mode.toString(8)}`;
    if (options.parents) route += '&parents=true';
    const stream = this.#request('PUT', route, options.timeoutMs ?? 10 * 60_000);
    const source =
      typeof data === 'string' || Buffer.isBuffer(data) ? Readable.from([Buffer.from(data)]) : data;
    source.on('error', (e) => stream.destroy(e));
    source.pipe(stream);
    const { headers, body } = await this.#response(stream);
    return this.#parseJson(headers, body, WriteResult);
  }

  /**
   * Reads a file from the guest as a stream. `maxBytes` caps what the host will accept:
   * the guest's own size claim is not trusted, the byte count is.
   */
  async readFile(path: string, options: { maxBytes?: number; timeoutMs?: number } = {}): Promise<Readable> {
    const maxBytes = options.maxBytes ?? Number.MAX_SAFE_INTEGER;
    const stream = this.#request(
      'GET',
      withPath(GUEST_ROUTES.fileContent, path),
      options.timeoutMs ?? 10 * 60_000,
    );
    stream.end();
    const headers = await waitForHeaders(stream);
    if (Number(headers[':status']) !== 200) {
      const { body } = await this.#response(stream, headers);
      throw this.#errorFrom(body);
    }
    let seen = 0;
    const limited = new Readable({ read() {} });
    stream.on('data', (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > maxBytes) {
        stream.destroy();
        limited.destroy(
          new WarrenError('PAYLOAD_TOO_LARGE', `file ${path} is larger than ${maxBytes} bytes`),
        );
        return;
      }
      if (!limited.push(chunk)) stream.pause();
    });
    limited._read = () => stream.resume();
    // The reader gone (its client left): end the stream in the guest too, instead of leaving it
    // paused with a window of data held here until the request's deadline.
    limited._destroy = (err, callback) => {
      if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
      callback(err);
    };
    // A channel cut can end the stream like a complete answer: the guest's length tells them apart.
    const length = Number(headers['content-length'] ?? Number.NaN);
    stream.on('end', () => {
      if (Number.isFinite(length) && seen !== length) {
        limited.destroy(
          new WarrenError('GUEST_UNAVAILABLE', `file stream cut after ${seen} of ${length} bytes`),
        );
      } else limited.push(null);
    });
    stream.on('error', (e) => limited.destroy(guestError(e)));
    stream.on('close', () => {
      if (!stream.readableEnded && !limited.destroyed)
        limited.destroy(new WarrenError('GUEST_UNAVAILABLE', 'file stream cut'));
    });
    return limited;
  }

  async readFileBuffer(path: string, maxBytes = 64 * 1024 * 1024): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of await this.readFile(path, { maxBytes })) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }

  /** Runs a command in the guest, streaming its output to the callbacks. */
  exec(spec: ExecRequest, options: ExecOptions = {}): Promise<ExecResult> {
    const hostDeadline = spec.timeoutMs === undefined ? 0 : spec.timeoutMs + HOST_TIMEOUT_GRACE_MS;
    const stream = this.#request('POST', GUEST_ROUTES.exec, hostDeadline);
    const wantsStdin = options.stdin !== undefined;
    stream.write(encodeFrame(FrameType.Spec, JSON.stringify({ ...spec, stdin: wantsStdin })));
    if (wantsStdin) pipeStdin(options.stdin!, stream);
    else stream.end();

    return new Promise<ExecResult>((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        options.signal?.removeEventListener('abort', onAbort);
        fn();
      };
      const onAbort = () => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        settle(() => reject(new WarrenError('CONFLICT', 'exec cancelled by the caller')));
      };
      if (options.signal?.aborted) onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });

      stream.once('response', (headers) => {
        if (Number(headers[':status']) !== 200) {
          this.#response(stream, headers).then(
            ({ body }) => settle(() => reject(this.#errorFrom(body))),
            (e) => settle(() => reject(e)),
          );
          return;
        }
        const decoder = new FrameDecoder();
        let held = 0;
        const hold = (pending: unknown) => {
          if (!(pending instanceof Promise)) return;
          // Paused, the stream stops granting the guest window, and the guest stops reading
          // the command's pipe, and the command blocks.
          held++;
          stream.pause();
          const release = () => {
            if (--held === 0 && !settled) stream.resume();
          };
          pending.then(release, release);
        };
        stream.on('data', (chunk: Buffer) => {
          // A guest may go on sending after its last frame; nobody listens any more.
          if (settled) return;
          let frames: ReturnType<FrameDecoder['push']>;
          try {
            frames = decoder.push(chunk);
          } catch (e) {
            stream.close(http2.constants.NGHTTP2_PROTOCOL_ERROR);
            settle(() => reject(new WarrenError('GUEST_PROTOCOL', (e as Error).message)));
            return;
          }
          for (const frame of frames) {
            if (settled) return;
            if (frame.type === FrameType.Stdout) hold(options.onStdout?.(frame.payload));
            else if (frame.type === FrameType.Stderr) hold(options.onStderr?.(frame.payload));
            else if (frame.type === FrameType.Exit) {
              try {
                const exit = parseOrThrow(
                  ExecExitSchema,
                  JSON.parse(frame.payload.toString('utf8')),
                  'GUEST_PROTOCOL',
                );
                settle(() => resolve(exit));
              } catch (e) {
                settle(() =>
                  reject(
                    e instanceof WarrenError
                      ? e
                      : new WarrenError('GUEST_PROTOCOL', 'exit frame is not JSON'),
                  ),
                );
              }
            } else if (frame.type === FrameType.Error) {
              settle(() => reject(this.#errorFrom(frame.payload)));
            } else {
              stream.close(http2.constants.NGHTTP2_PROTOCOL_ERROR);
              settle(() => reject(new WarrenError('GUEST_PROTOCOL', `unknown frame type ${frame.type}`)));
            }
          }
        });
      });
      stream.once('timeout', () => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        settle(() => resolve({ exitCode: null, signal: null, timedOut: true, durationMs: hostDeadline }));
      });
      stream.once('close', () =>
        settle(() =>
          reject(new WarrenError('GUEST_UNAVAILABLE', 'exec stream closed before the command ended')),
        ),
      );
      stream.once('error', (e) => settle(() => reject(guestError(e))));
    });
  }

  #request(method: string, path: string, timeoutMs: number): ClientHttp2Stream {
    if (this.closed) throw new WarrenError('GUEST_UNAVAILABLE', 'guest channel is closed');
    const stream = this.#session.request({ ':method': method, ':path': path }, { endStream: false });
    if (timeoutMs > 0) stream.setTimeout(timeoutMs);
    stream.on('error', () => {});
    return stream;
  }

  async #json<S extends z.ZodType>(
    method: string,
    path: string,
    schema: S | null,
    body?: unknown,
    timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
  ): Promise<z.output<S>> {
    const stream = this.#request(method, path, timeoutMs);
    stream.end(body === undefined ? undefined : JSON.stringify(body));
    const { headers, body: raw } = await this.#response(stream);
    return this.#parseJson(headers, raw, schema);
  }

  #parseJson<S extends z.ZodType>(headers: IncomingHttpHeaders, raw: Buffer, schema: S | null): z.output<S> {
    const status = Number(headers[':status']);
    if (status < 200 || status > 299) throw this.#errorFrom(raw);
    if (schema === null) return undefined as z.output<S>;
    let value: unknown;
    try {
      value = JSON.parse(raw.toString('utf8'));
    } catch {
      throw new WarrenError('GUEST_PROTOCOL', 'guest answered with invalid JSON');
    }
    return parseOrThrow(schema, value, 'GUEST_PROTOCOL');
  }

  #errorFrom(raw: Buffer): WarrenError {
    try {
      return WarrenError.fromBody(JSON.parse(raw.toString('utf8')), 'GUEST_PROTOCOL');
    } catch {
      return new WarrenError('GUEST_PROTOCOL', 'guest sent an error that is not JSON');
    }
  }

  async #response(
    stream: ClientHttp2Stream,
    known?: IncomingHttpHeaders,
  ): Promise<{ headers: IncomingHttpHeaders; body: Buffer }> {
    const headers = known ?? (await waitForHeaders(stream));
    const body = await readCapped(stream, MAX_GUEST_JSON_BYTES);
    return { headers, body };
  }
}

/** A handshake the guest's side ended: that connection met a stale session. */
class HandshakeCut extends WarrenError {}

function withPath(route: string, path: string): string {
  return `${route}?path=${encodeURIComponent(path)}`;
}

function guestError(e: unknown): WarrenError {
  return e instanceof WarrenError
    ? e
    : new WarrenError('GUEST_UNAVAILABLE', `guest stream failed: ${(e as Error).message}`);
}

function waitForHeaders(stream: ClientHttp2Stream): Promise<IncomingHttpHeaders> {
  return new Promise((resolve, reject) => {
    stream.once('response', resolve);
    stream.once('timeout', () => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(new WarrenError('TIMEOUT', 'guest agent did not answer in time'));
    });
    stream.once('close', () =>
      reject(new WarrenError('GUEST_UNAVAILABLE', 'guest stream closed without an answer')),
    );
    stream.once('error', (e) => reject(guestError(e)));
  });
}

function readCapped(stream: ClientHttp2Stream, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(new WarrenError('GUEST_PROTOCOL', `guest reply over ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('timeout', () => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(new WarrenError('TIMEOUT', 'guest agent did not finish its answer in time'));
    });
    stream.once('close', () => reject(new WarrenError('GUEST_UNAVAILABLE', 'guest stream closed early')));
  });
}

function pipeStdin(input: Readable | Buffer | string, stream: ClientHttp2Stream) {
  const source =
    typeof input === 'string' || Buffer.isBuffer(input) ? Readable.from([Buffer.from(input)]) : input;
  source.on('data', (chunk: Buffer) => {
    for (let off = 0; off < chunk.length; off += MAX_FRAME_PAYLOAD) {
      if (!stream.write(encodeFrame(FrameType.Stdin, chunk.subarray(off, off + MAX_FRAME_PAYLOAD)))) {
        source.pause();
        stream.once('drain', () => source.resume());
      }
    }
  });
  source.once('end', () => stream.end());
  source.once('error', () => stream.close(http2.constants.NGHTTP2_CANCEL));
}
