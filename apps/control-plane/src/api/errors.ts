import { WarrenError } from '@warren/protocol';

/**
 * Turns anything thrown while serving a request into a WarrenError. Fastify's own errors
 * (bad JSON, unsupported media type, body too large) are the client's fault and keep a 4xx;
 * everything unknown is INTERNAL and gets logged by the caller.
 */
export function toWarrenError(error: unknown): WarrenError {
  if (error instanceof WarrenError) return error;
  const e = error as Error & { statusCode?: number; code?: string };
  if (e?.statusCode === 413) return new WarrenError('PAYLOAD_TOO_LARGE', e.message);
  if (e?.statusCode === 404) return new WarrenError('NOT_FOUND', e.message);
  if (e?.statusCode && e.statusCode >= 400 && e.statusCode < 500) {
    return new WarrenError('INVALID_ARGUMENT', e.message);
  }
  return new WarrenError('INTERNAL', 'internal error; see the control-plane log', { cause: error });
}

/** SQL unique-constraint violations, whatever the dialect words them as. */
export function isUniqueViolation(e: unknown): boolean {
  const m = String((e as Error)?.message ?? '');
  return /UNIQUE constraint failed|duplicate key value/i.test(m);
}
