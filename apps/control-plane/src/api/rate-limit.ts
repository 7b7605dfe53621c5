import { WarrenError } from '@warren/protocol';

interface Bucket {
  tokens: number;
  at: number;
}

/** Idle buckets are dropped at most this often; a full bucket holds nothing worth keeping. */
const SWEEP_EVERY_MS = 60_000;

/**
 * Per-credential request rate limit: a token bucket per key id (a tenant key, the admin token,
 * a host or join token; a browser session counts as the key that opened it), not per address,
 * so one tenant's key cannot crowd out another's and a client behind many addresses gains
 * nothing. `burst` requests at once, then `perSecond` sustained. In memory: with several
 * control planes each enforces its own.
 */
export class RateLimiter {
  readonly perSecond: number;
  readonly burst: number;
  readonly #buckets = new Map<string, Bucket>();
  #sweptAt = 0;

  /** `perSecond` 0 turns the limit off. */
  constructor(perSecond: number, burst: number) {
    this.perSecond = perSecond;
    this.burst = burst;
  }

  /** Counts one request of `key`; throws RATE_LIMITED (with `retryAfterSeconds`) when over. */
  take(key: string): void {
    if (this.perSecond === 0) return;
    const t = performance.now();
    let b = this.#buckets.get(key);
    if (b) {
      b.tokens = Math.min(this.burst, b.tokens + ((t - b.at) * this.perSecond) / 1000);
      b.at = t;
    } else {
      this.#sweep(t);
      b = { tokens: this.burst, at: t };
      this.#buckets.set(key, b);
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return;
    }
    const retryAfterSeconds = Math.max(1, Math.ceil((1 - b.tokens) / this.perSecond));
    throw new WarrenError(
      'RATE_LIMITED',
      `this credential sent more than ${this.burst} requests at once or ${this.perSecond}/s sustained; retry in ${retryAfterSeconds} s`,
      { details: { retryAfterSeconds } },
    );
  }

  #sweep(t: number): void {
    if (t - this.#sweptAt < SWEEP_EVERY_MS) return;
    this.#sweptAt = t;
    const fullAfterMs = (this.burst / this.perSecond) * 1000;
    for (const [key, b] of this.#buckets) if (t - b.at >= fullAfterMs) this.#buckets.delete(key);
  }
}
