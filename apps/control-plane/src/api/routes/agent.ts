import {
  HeartbeatRequest,
  HeartbeatResponse,
  JoinRequest,
  JoinResponse,
  WarrenError,
} from '@warren/protocol';
import type { Api } from '../context.ts';

/** The host agents' side of the API: join once, then heartbeat. */
export function agentRoutes(api: Api): void {
  api.route(
    {
      method: 'POST',
      url: '/v1/agent/join',
      auth: 'join',
      summary:
        "A host agent joins with a join token and receives its own host token; an existing host's name needs that host's token or a re-join token",
      body: JoinRequest,
      response: { status: 200, schema: JoinResponse },
      audit: 'host.join',
    },
    async ({ body, audit, principal }) => {
      audit.target = body.name;
      if (principal?.kind !== 'join') throw new WarrenError('FORBIDDEN', 'joining needs a join token');
      return api.hosts.join(body, principal);
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/agent/heartbeat',
      auth: 'host',
      summary: "A host agent reports capacity, images and its VMs' state, and receives desired state",
      body: HeartbeatRequest,
      // A host's full VM list: up to 10,000 entries.
      bodyLimit: 16 * 1024 * 1024,
      response: { status: 200, schema: HeartbeatResponse },
    },
    async ({ body, principal }) =>
      api.hosts.heartbeat(principal!.kind === 'host' ? principal!.hostId : '', body),
  );
}
