/**
 * A client of `GET /v1/events` for tests: reads the stream as it comes, keeps every event, and
 * waits (with a deadline) for one that matches.
 */
import type { PlatformEvent } from '@warren/protocol';
import { until } from './until.ts';

export interface EventStream {
  status: number;
  events: PlatformEvent[];
  /** Comment lines (`: keepalive`) seen. */
  comments: string[];
  /** Set once the server ended the stream. */
  ended: boolean;
  /** The first event (from index `from`) that matches, waiting for it up to `timeoutMs`. */
  next(
    what: string,
    match: (e: PlatformEvent) => boolean,
    timeoutMs?: number,
    from?: number,
  ): Promise<PlatformEvent>;
  close(): void;
}

export async function openEvents(
  url: string,
  token: string,
  opts: { query?: string; lastEventId?: string } = {},
): Promise<EventStream> {
  const abort = new AbortController();
  const res = await fetch(`${url}/v1/events${opts.query ? `?${opts.query}` : ''}`, {
    headers: {
      authorization: `Bearer ${token}`,
      ...(opts.lastEventId ? { 'last-event-id': opts.lastEventId } : {}),
    },
    signal: abort.signal,
  });
  const stream: EventStream = {
    status: res.status,
    events: [],
    comments: [],
    ended: false,
    async next(what, match, timeoutMs = 10_000, from = 0) {
      let found: PlatformEvent | undefined;
      await until(
        what,
        async () => {
          found = stream.events.slice(from).find(match);
          return found !== undefined;
        },
        timeoutMs,
      );
      return found!;
    },
    close: () => abort.abort(),
  };
  if (!res.ok || !res.body) {
    stream.ended = true;
    return stream;
  }
  void (async () => {
    let buf = '';
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block
            .split('\n')
            .filter((l) => l.startsWith('data: '))
            .map((l) => l.slice(6));
          for (const l of block.split('\n')) if (l.startsWith(':')) stream.comments.push(l.slice(1).trim());
          if (data.length) stream.events.push(JSON.parse(data.join('\n')));
        }
      }
    } catch {
      // aborted by close(), or the server dropped the stream
    }
    stream.ended = true;
  })();
  return stream;
}
