/** The small part of autocannon 8's programmatic API that bench/api.ts uses (it ships no types). */
declare module 'autocannon' {
  export interface Request {
    method?: string;
    path?: string;
    headers?: Record<string, string>;
    body?: string;
  }

  export interface Options {
    url: string;
    connections?: number;
    /** Seconds. */
    duration?: number;
    /** Worker threads firing the requests (0/undefined: the calling thread). */
    workers?: number;
    headers?: Record<string, string>;
    requests?: Request[];
  }

  /** Percentiles are in milliseconds for latency, per-second samples for requests. */
  export interface Histogram {
    average: number;
    mean: number;
    stddev: number;
    min: number;
    max: number;
    total: number;
    p50: number;
    p90: number;
    p99: number;
  }

  export interface Result {
    duration: number;
    errors: number;
    timeouts: number;
    non2xx: number;
    latency: Histogram;
    requests: Histogram & { sent: number };
  }

  function autocannon(opts: Options): Promise<Result>;
  export default autocannon;
}
