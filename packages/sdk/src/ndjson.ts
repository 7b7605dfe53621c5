import { WarrenError } from '@warren/protocol';

/** Bounds what one NDJSON line may buffer: a stdout chunk or a progress line is far smaller. */
export const MAX_NDJSON_LINE = 16 * 1024 * 1024;

/**
 * The objects of an NDJSON body, one per non-empty line. Stopping the iteration cancels the
 * rest of the body and frees the connection. Transport errors pass through as they are.
 */
export async function* ndjsonObjects(
  body: AsyncIterable<Uint8Array>,
  what: string,
): AsyncGenerator<Record<string, unknown>> {
  const decoder = new TextDecoder();
  let pending = '';
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true });
    let nl = pending.indexOf('\n');
    while (nl >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.trim() !== '') yield parseLine(line, what);
      nl = pending.indexOf('\n');
    }
    if (pending.length > MAX_NDJSON_LINE) {
      throw new WarrenError(
        'INTERNAL',
        `the ${what} stream sent a line longer than ${MAX_NDJSON_LINE} bytes`,
      );
    }
  }
  pending += decoder.decode();
  if (pending.trim() !== '') yield parseLine(pending, what);
}

function parseLine(line: string, what: string): Record<string, unknown> {
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch {
    throw new WarrenError(
      'INTERNAL',
      `the ${what} stream sent a line that is not JSON: ${line.slice(0, 100)}`,
    );
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
    throw new WarrenError(
      'INTERNAL',
      `the ${what} stream sent a line that is not an object: ${line.slice(0, 100)}`,
    );
  }
  return msg as Record<string, unknown>;
}
