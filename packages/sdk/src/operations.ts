import { setTimeout as sleep } from 'node:timers/promises';
import { isErrorCode, Operation, Tenant, WarrenError } from '@warren/protocol';
import { type Http, path } from './http.ts';

export interface WaitProgress {
  operation: Operation;
  /** The tenant as it is now; null once it is gone (a finished delete). */
  tenant: Tenant | null;
}

export interface WaitOptions {
  /** Called after every poll; makes each poll also read the tenant, for its state. */
  onProgress?: (progress: WaitProgress) => void;
  /** Gives up with TIMEOUT after this long; the operation itself keeps going. Default: no limit. */
  timeoutMs?: number;
  /** Time between polls. Default 500 ms. */
  intervalMs?: number;
  signal?: AbortSignal;
}

/** A control plane that restarts (e.g. under `warren up`) should not fail a wait. */
const TOLERATED_UNREACHABLE_POLLS = 10;

/** The error a failed operation stands for, with the code the control plane gave it. */
export function operationError(op: Operation): WarrenError {
  const code = isErrorCode(op.error?.code) ? op.error.code : 'INTERNAL';
  const why = op.error ? op.error.message : 'no reason given';
  return new WarrenError(code, `${op.kind} of tenant ${op.tenantName} failed: ${why}`, {
    details: { operation: op.id, tenant: op.tenantName },
  });
}

export class Operations {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  async get(id: string, options: { signal?: AbortSignal } = {}): Promise<Operation> {
    return this.#http.json(Operation, 'GET', path`/v1/operations/${id}`, { signal: options.signal });
  }

  /**
   * Polls the operation until it is no longer running. Resolves with the succeeded operation;
   * a failed one throws a WarrenError with the operation's error code.
   */
  async wait(id: string, options: WaitOptions = {}): Promise<Operation> {
    const interval = options.intervalMs ?? 500;
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    let unreachable = 0;
    for (;;) {
      let op: Operation | undefined;
      try {
        op = await this.get(id, { signal: options.signal });
        unreachable = 0;
      } catch (e) {
        if (!(e instanceof WarrenError && e.code === 'API_UNREACHABLE')) throw e;
        if (++unreachable >= TOLERATED_UNREACHABLE_POLLS || Date.now() >= deadline) throw e;
      }
      if (op) {
        if (options.onProgress) {
          const tenant = await this.#tenantOf(op, options);
          if (tenant !== undefined) options.onProgress({ operation: op, tenant });
        }
        if (op.status === 'succeeded') return op;
        if (op.status === 'failed') throw operationError(op);
      }
      if (Date.now() + interval > deadline) {
        throw new WarrenError(
          'TIMEOUT',
          `operation ${id} is still running after ${Math.round(options.timeoutMs! / 1000)} s; it goes on in the background (its status: GET /v1/operations/${id})`,
        );
      }
      try {
        await sleep(interval, undefined, { signal: options.signal });
      } catch (e) {
        throw new WarrenError('CONFLICT', `waiting for operation ${id} cancelled by the caller`, {
          cause: e,
        });
      }
    }
  }

  /** undefined when the API did not answer this time: no progress to report then. */
  async #tenantOf(op: Operation, options: WaitOptions): Promise<Tenant | null | undefined> {
    try {
      return await this.#http.json(Tenant, 'GET', path`/v1/tenants/${op.tenantId}`, {
        signal: options.signal,
      });
    } catch (e) {
      if (e instanceof WarrenError && e.code === 'NOT_FOUND') return null;
      if (e instanceof WarrenError && e.code === 'API_UNREACHABLE') return undefined;
      throw e;
    }
  }
}
