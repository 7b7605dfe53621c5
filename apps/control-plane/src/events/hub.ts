import { randomBytes } from 'node:crypto';
import type { PlatformEvent } from '@warren/protocol';

/** An event as its producer hands it over; the hub gives it its id and time. */
export type NewEvent = PlatformEvent extends infer E
  ? E extends PlatformEvent
    ? Omit<E, 'id' | 'at'>
    : never
  : never;

export interface Subscriber {
  /**
   * Events the subscriber was given and has not taken yet: its replay (at most the buffer), and
   * at most `queueLimit` more.
   */
  readonly queue: PlatformEvent[];
  /** How many of the first events queued are the replay (`Last-Event-ID`). */
  readonly replayed: number;
  /** Set when the queue overflowed; the subscriber is gone from the hub by then. */
  dropped: boolean;
  close(): void;
}

export interface SubscribeOptions {
  /** Which events this subscriber may see and asked for. */
  filter: (e: PlatformEvent) => boolean;
  /** `Last-Event-ID`: buffered events after it are queued first. */
  lastEventId?: string | undefined;
  /** Called (synchronously) after events were queued. */
  onEvent: () => void;
  /** Called once when the subscriber is dropped for not keeping up. */
  onDrop: () => void;
}

/**
 * The control plane's one event stream, in memory: producers `publish`, each subscriber (an SSE
 * client) gets its own bounded queue. The last `bufferSize` events are kept in a ring buffer for
 * `Last-Event-ID` replay; nothing is written to the database, so a restart starts a new stream
 * (a new `stream` prefix in the ids). A subscriber whose queue reaches `queueLimit` is dropped:
 * one slow client never makes the hub hold more than that for it.
 */
export class EventHub {
  /** Random per start, so an id from before a restart is recognised as unknown. */
  readonly stream = randomBytes(4).toString('hex');
  readonly #ring: (PlatformEvent | undefined)[];
  #seq = 0;
  readonly #subscribers = new Set<Subscriber & { o: SubscribeOptions; allowance: number }>();
  readonly #queueLimit: number;
  /** Subscribers dropped for not keeping up, since start (a metric). */
  droppedTotal = 0;

  constructor(options: { bufferSize: number; queueLimit: number }) {
    this.#ring = new Array(Math.max(1, options.bufferSize));
    this.#queueLimit = options.queueLimit;
  }

  get subscriberCount(): number {
    return this.#subscribers.size;
  }

  /** Ends every subscription (the server is closing): each one's `onDrop` closes its stream. */
  closeAll(): void {
    for (const s of this.#subscribers) {
      this.#subscribers.delete(s);
      s.o.onDrop();
    }
  }

  publish(input: NewEvent): PlatformEvent {
    this.#seq += 1;
    const event = {
      id: `${this.stream}-${this.#seq}`,
      at: new Date().toISOString(),
      ...input,
    } as PlatformEvent;
    this.#ring[this.#seq % this.#ring.length] = event;
    for (const s of this.#subscribers) this.#offer(s, [event]);
    return event;
  }

  subscribe(o: SubscribeOptions): Subscriber {
    const sub: Subscriber & { o: SubscribeOptions; allowance: number; replayed: number } = {
      o,
      allowance: 0,
      replayed: 0,
      queue: [],
      dropped: false,
      close: () => {
        this.#subscribers.delete(sub);
      },
    };
    if (o.lastEventId !== undefined) {
      const replay = this.#since(o.lastEventId);
      if (replay === 'unknown-id' || replay === 'too-old') {
        sub.queue.push(this.#reset(replay));
        sub.replayed = 1;
      } else {
        // A replay is at most the buffer, which the hub holds anyway: it does not count
        // against the subscriber's queue limit, only what comes live after it does.
        for (const e of replay) if (o.filter(e)) sub.queue.push(e);
        sub.allowance = sub.queue.length;
        sub.replayed = sub.queue.length;
      }
    }
    this.#subscribers.add(sub);
    return sub;
  }

  /** Buffered events after `id`, or why they cannot be given. */
  #since(id: string): PlatformEvent[] | 'unknown-id' | 'too-old' {
    if (id === '0') return this.#after(Math.max(0, this.#seq - this.#ring.length));
    const m = /^([0-9a-f]+)-(\d+)$/.exec(id);
    if (!m || m[1] !== this.stream) return 'unknown-id';
    const after = Number(m[2]);
    if (after > this.#seq) return 'unknown-id';
    const oldest = Math.max(1, this.#seq - this.#ring.length + 1);
    // `after` itself may have left the buffer: only what follows it must still be there.
    if (after + 1 < oldest) return 'too-old';
    return this.#after(after);
  }

  #after(after: number): PlatformEvent[] {
    const out: PlatformEvent[] = [];
    for (let s = after + 1; s <= this.#seq; s++) out.push(this.#ring[s % this.#ring.length]!);
    return out;
  }

  #reset(reason: 'unknown-id' | 'too-old'): PlatformEvent {
    return {
      id: `${this.stream}-${this.#seq}`,
      at: new Date().toISOString(),
      type: 'stream.reset',
      tenantId: null,
      data: { reason },
    };
  }

  #offer(sub: Subscriber & { o: SubscribeOptions; allowance: number }, events: PlatformEvent[]): void {
    let added = false;
    for (const e of events) {
      if (!sub.o.filter(e)) continue;
      if (sub.queue.length >= this.#queueLimit + sub.allowance) {
        sub.dropped = true;
        sub.queue.length = 0;
        this.#subscribers.delete(sub);
        this.droppedTotal += 1;
        sub.o.onDrop();
        return;
      }
      sub.queue.push(e);
      added = true;
    }
    if (added) sub.o.onEvent();
  }
}
