/**
 * The daemons' structured logs: pino, one JSON object per line on stderr, also used as Fastify's
 * own logger. Pretty lines instead when stderr is a terminal (a small formatter, no transport
 * worker thread). Fields that may hold a credential or a secret are redacted by name wherever
 * they appear, so a careless `log.info({ req })` or `{ env }` cannot leak one.
 */

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { LogController } from 'fastify';
import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger } from 'pino';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/**
 * Field names whose values are never logged, at any depth up to three (pino's redaction takes
 * paths, so each name is listed at the depths it may appear). Lowercase header names included.
 */
const SECRET_FIELDS = [
  'authorization',
  'cookie',
  'set-cookie',
  'token',
  'adminToken',
  'agentToken',
  'hostToken',
  'joinToken',
  'metricsToken',
  'password',
  'secret',
  'secrets',
  'credentials',
  'env',
  'files',
  'stdin',
  'masterKey',
  'key',
];
export const REDACT_PATHS = SECRET_FIELDS.flatMap((f) => {
  const k = /^[A-Za-z_$][\w$]*$/.test(f) ? f : `["${f}"]`;
  const dot = k.startsWith('[') ? k : `.${k}`;
  return [k, `*${dot}`, `*.*${dot}`, `*.*.*${dot}`];
});

export interface LogOptions {
  /** `control-plane` or `host-agent`: the `name` field of every line. */
  name: string;
  level?: LogLevel;
  /** `auto`: pretty when stderr is a TTY, JSON otherwise. */
  format?: LogFormat;
  /** Where lines go; stderr by default (tests pass a collecting stream). */
  destination?: DestinationStream;
}

export function createLogger(options: LogOptions): Logger {
  const pretty =
    options.format === 'pretty' || ((options.format ?? 'auto') === 'auto' && process.stderr.isTTY === true);
  const destination: DestinationStream =
    options.destination ?? (pretty ? prettyStream(process.stderr) : pino.destination({ fd: 2, sync: true }));
  return pino(
    {
      name: options.name,
      level: options.level ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      serializers: {
        err: pino.stdSerializers.err,
        // Fastify's default would log every header and the query string: method and path only.
        req: (req: { method?: string; url?: string }) => ({
          method: req.method,
          path: (req.url ?? '').split('?')[0],
        }),
      },
    },
    destination,
  );
}

/** A `(message) => void` for code that logs plain sentences; each becomes one `info` line. */
export function logFunction(logger: Logger): (message: string) => void {
  return (message) => logger.info(message);
}

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};

/** `12:00:00.123 INFO  control-plane: message key=value …`: one JSON line in, one text line out. */
export function prettyLine(line: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line);
  } catch {
    return line;
  }
  const { time, level, name, msg, pid: _pid, hostname: _h, ...rest } = o;
  const t = typeof time === 'string' ? time.slice(11, 23) : '';
  const extra = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  const lvl = (LEVEL_NAMES[level as number] ?? String(level)).padEnd(5);
  return `${t} ${lvl} ${name ?? ''}: ${msg ?? ''}${extra ? ` ${extra}` : ''}\n`;
}

function prettyStream(out: NodeJS.WriteStream): DestinationStream {
  return {
    write: (chunk: string) => void out.write(chunk.split('\n').filter(Boolean).map(prettyLine).join('')),
  };
}

/**
 * Fastify's request logging, quieter: no "incoming request" line, one "request" line when a
 * request completes (method, route, status, time; the request id comes from the child logger),
 * at `debug` for the routes that run every second or so (heartbeats, metrics scrapes).
 */
export class RequestLogController extends LogController {
  readonly #quiet: Set<string>;

  constructor(quietRoutes: string[] = []) {
    super();
    this.#quiet = new Set(quietRoutes);
  }

  override incomingRequest(): void {}

  override requestCompleted(
    error: Error | null | undefined,
    request: FastifyRequest,
    reply: FastifyReply,
  ): void {
    const route = request.routeOptions?.url ?? 'unmatched';
    const fields = {
      method: request.method,
      route,
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime * 10) / 10,
      ...(error ? { err: error } : {}),
    };
    if (error) reply.log.error(fields, 'request failed');
    else if (this.#quiet.has(route)) reply.log.debug(fields, 'request');
    else reply.log.info(fields, 'request');
  }
}

/** Requests whose `request` line Fastify's own completion logged (streams it hands over are not). */
const completed = new WeakSet<object>();

/**
 * Routes that take over the response (`reply.hijack()`: exec streams, the dashboard proxy, event
 * streams) end without Fastify's completion: their `request` line is written when the
 * connection's response closes. Call once per app that has a logger.
 */
export function logHandedOverRequests(app: FastifyInstance): void {
  app.addHook('onRequest', async (req, reply) => {
    reply.raw.once('close', () =>
      // After the completion hooks of an ordinary response have run.
      setImmediate(() => {
        if (completed.has(req)) return;
        completed.add(req);
        req.log.info(
          {
            method: req.method,
            route: req.routeOptions?.url ?? 'unmatched',
            status: reply.raw.statusCode,
            ms: Math.round(reply.elapsedTime * 10) / 10,
            ...(reply.raw.writableFinished ? {} : { aborted: true }),
          },
          'request',
        );
      }),
    );
  });
}

/** Request ids another service sent (`x-request-id`) are kept only when they look like ours. */
export const REQUEST_ID_HEADER = 'x-request-id';
const REQUEST_ID = /^[A-Za-z0-9_.:-]{1,80}$/;
export function acceptRequestId(value: unknown): string | undefined {
  return typeof value === 'string' && REQUEST_ID.test(value) ? value : undefined;
}

/**
 * The daemon's logger for code far from any `log` parameter (a worker's stderr relayed); the
 * daemon sets it at start. Until then (tests in process) lines go to stderr as they are.
 */
let daemonLogger: Logger | undefined;
export function setDaemonLogger(logger: Logger): void {
  daemonLogger = logger;
}
export function daemonLog(level: 'info' | 'warn' | 'error', message: string): void {
  if (daemonLogger) daemonLogger[level](message);
  else process.stderr.write(`${message}\n`);
}
