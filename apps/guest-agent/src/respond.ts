import type { ServerHttp2Stream } from 'node:http2';
import { type ErrorCode, WarrenError } from '@warren/protocol/guest';

export function sendJson(stream: ServerHttp2Stream, status: number, body: unknown): void {
  if (stream.destroyed || stream.closed) return;
  const data = Buffer.from(JSON.stringify(body));
  if (!stream.headersSent) {
    stream.respond({ ':status': status, 'content-type': 'application/json', 'content-length': data.length });
  }
  stream.end(data);
}

export function sendError(stream: ServerHttp2Stream, error: unknown): void {
  const e = toWarrenError(error);
  if (stream.headersSent) {
    stream.close();
    return;
  }
  sendJson(stream, e.status, e.toBody());
}

/** Maps Node/system errors from guest operations to the stable codes. */
export function toWarrenError(error: unknown): WarrenError {
  if (error instanceof WarrenError) return error;
  const err = error as NodeJS.ErrnoException;
  if (typeof err?.code === 'string' && err.code.startsWith('E')) {
    const code: ErrorCode = err.code === 'ENOENT' ? 'NOT_FOUND' : 'FILE_ERROR';
    return new WarrenError(code, `${err.code}: ${err.message}`, { details: { errno: err.code } });
  }
  return new WarrenError('INTERNAL', String(err?.message ?? error));
}

/** Reads a whole request body as JSON, refusing more than `limit` bytes. */
export async function readJsonBody(stream: ServerHttp2Stream, limit = 64 * 1024): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new WarrenError('PAYLOAD_TOO_LARGE', `request body over ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new WarrenError('INVALID_ARGUMENT', 'request body is not valid JSON');
  }
}
