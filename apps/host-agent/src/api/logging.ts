import { randomBytes } from 'node:crypto';
import { acceptRequestId, type Logger, REQUEST_ID_HEADER, RequestLogController } from '@warren/telemetry';
import type { FastifyBaseLogger, FastifyServerOptions } from 'fastify';

/**
 * Fastify options for the agent's APIs: the daemon's logger (one line per request, with its id),
 * and request ids taken from the control plane's `x-request-id` when it sends one, so a request
 * can be followed from the control plane's log into this one. None in tests in process.
 */
export function fastifyLogging(logger: Logger | undefined): Partial<FastifyServerOptions> {
  if (!logger) return { logger: false };
  return {
    // pino's Logger is Fastify's logger; only the declared types differ.
    loggerInstance: logger as unknown as FastifyBaseLogger,
    logController: new RequestLogController(['/metrics', '/v1/wake', '/v1/vms/:id/health']),
    genReqId: (req) =>
      acceptRequestId(req.headers[REQUEST_ID_HEADER]) ?? `agt_${randomBytes(8).toString('hex')}`,
  };
}
