import { EVENTS_CONTENT_TYPE, type EventsQuery, PlatformEvent, WarrenError } from '@warren/protocol';
import type { Http } from './http.ts';

export interface EventStreamOptions {
  /** Only this tenant's events (id or name). */
  tenant?: string;
  /** Event types or families, e.g. `['tenant', 'operation.updated']`. */
  types?: string[];
  /**
   * Resume after this event id (`Last-Event-ID`). `'0'`: start with every event the control
   * plane still holds (its buffer, WARREN_EVENTS_BUFFER).
   */
  lastEventId?: string;
  /** false: end once the replay (`lastEventId`) is delivered, instead of following live events. */
  follow?: boolean;
  signal?: AbortSignal;
}

/** `GET /v1/events` (docs/api.md, "Events"). */
export class Events {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /**
   * The event stream, as an async iterable: each server-sent event parsed and validated. Ends
   * when the server ends the stream (it dropped a client that fell behind: resume with the last
   * id seen as `lastEventId`), at the end of the replay when `follow` is false, or on `signal`.
   */
  async *stream(options: EventStreamOptions = {}): AsyncGenerator<PlatformEvent> {
    const query: Partial<EventsQuery> = {
      ...(options.tenant ? { tenant: options.tenant } : {}),
      ...(options.types?.length ? { types: options.types.join(',') } : {}),
    };
    const res = await this.#http.request('GET', '/v1/events', {
      query,
      accept: EVENTS_CONTENT_TYPE,
      ...(options.lastEventId !== undefined ? { headers: { 'last-event-id': options.lastEventId } } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    if (!res.body) return;
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const lines = block.split('\n');
          if (options.follow === false && lines.includes(': live')) return;
          const data = lines.filter((l) => l.startsWith('data: ')).map((l) => l.slice(6));
          if (data.length === 0) continue;
          const parsed = PlatformEvent.safeParse(JSON.parse(data.join('\n')));
          // An event type newer than this SDK is skipped, not fatal.
          if (parsed.success) yield parsed.data;
        }
      }
    } catch (e) {
      if (options.signal?.aborted) return;
      throw e instanceof WarrenError ? e : this.#http.unreachable(e, 'while reading events');
    } finally {
      await res.body.cancel().catch(() => {});
    }
  }
}
