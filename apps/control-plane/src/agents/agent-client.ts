import { Readable } from 'node:stream';
import { WarrenError } from '@warren/protocol';
import { requestContext } from '../request-context.ts';
import type { HostsTable } from '../store/database.ts';

type HostRef = Pick<HostsTable, 'id' | 'name' | 'address' | 'agent_token'>;

/**
 * Calls a host agent's API, for what cannot go through desired state: exec, files and the
 * wake-up nudge. The control plane may run on another machine, so this is plain HTTP to the
 * address the agent registered, authenticated with the token the agent chose at join.
 */
export class AgentClient {
  async request(
    host: HostRef,
    method: string,
    path: string,
    init: {
      body?: string | Buffer | Readable;
      contentType?: string;
      signal?: AbortSignal;
      timeoutMs?: number;
    } = {},
  ): Promise<Response> {
    const signals = [AbortSignal.timeout(init.timeoutMs ?? 30_000)];
    if (init.signal) signals.push(init.signal);
    let res: Response;
    const requestId = requestContext.getStore()?.requestId;
    try {
      res = await fetch(new URL(path, host.address), {
        method,
        headers: {
          authorization: `Bearer ${host.agent_token}`,
          // The host agent logs it with its own lines for this call.
          ...(requestId ? { 'x-request-id': requestId } : {}),
          ...(init.contentType ? { 'content-type': init.contentType } : {}),
        },
        ...(init.body === undefined
          ? {}
          : {
              body: init.body instanceof Readable ? (Readable.toWeb(init.body) as ReadableStream) : init.body,
              duplex: 'half',
            }),
        signal: AbortSignal.any(signals),
      } as RequestInit);
    } catch (e) {
      throw new WarrenError(
        'HOST_UNAVAILABLE',
        `host ${host.name} does not answer: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
    if (!res.ok) {
      const body = await res.json().catch(() => undefined);
      const err = WarrenError.fromBody(body, res.status >= 500 ? 'HOST_UNAVAILABLE' : 'INVALID_ARGUMENT');
      // The agent's own auth failing is our problem, not the caller's.
      if (err.code === 'UNAUTHENTICATED' || err.code === 'FORBIDDEN') {
        throw new WarrenError(
          'HOST_UNAVAILABLE',
          `host ${host.name} refused the control plane's credentials`,
        );
      }
      throw err;
    }
    return res;
  }

  /** Asks the agent to heartbeat now; best effort, the interval catches up anyway. */
  wake(host: HostRef): void {
    void this.request(host, 'POST', '/v1/wake', { timeoutMs: 2_000 })
      .then((r) => r.body?.cancel())
      .catch(() => {});
  }
}
