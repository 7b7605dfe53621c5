import {
  EVENTS_CONTENT_TYPE,
  EventsQuery,
  eventTypeMatches,
  type PlatformEvent,
  parseOrThrow,
  TenantRef,
} from '@warren/protocol';
import type { EventHub } from '../../events/hub.ts';
import { findTenantForPrincipal, tenantFilter } from '../../tenants/scope.ts';
import type { Api } from '../context.ts';

/** `GET /v1/events`: the event stream as server-sent events (docs/api.md, "Events"). */
export function eventRoutes(api: Api, hub: EventHub): void {
  api.route(
    {
      method: 'GET',
      url: '/v1/events',
      auth: 'tenant',
      summary:
        'Server-sent events: tenant, operation, host and audit changes as they happen; resumes with Last-Event-ID',
      query: EventsQuery,
      response: { status: 200, contentType: EVENTS_CONTENT_TYPE },
    },
    async ({ req, reply, principal, query }) => {
      // A tenant key (or a tenant-confined admin session) sees its own tenant only.
      let only = tenantFilter(principal);
      if (query.tenant) {
        const ref = parseOrThrow(TenantRef, query.tenant);
        // The admin may follow a tenant by id that is gone (its `tenant.deleted` is news).
        only =
          only === undefined && ref.startsWith('ten_')
            ? ref
            : (await findTenantForPrincipal(api.db, principal, ref)).id;
      }
      const types = query.types?.split(',');
      const filter = (e: PlatformEvent) =>
        (e.type === 'stream.reset' || only === undefined || e.tenantId === only) &&
        (!types || eventTypeMatches(e.type, types));
      const lastEventId = req.headers['last-event-id'];
      const raw = reply.raw;
      reply.hijack();
      raw.writeHead(200, {
        'content-type': `${EVENTS_CONTENT_TYPE}; charset=utf-8`,
        'cache-control': 'no-cache, no-transform',
        'x-accel-buffering': 'no',
        connection: 'keep-alive',
        'x-request-id': req.id,
      });
      // The headers and one line at once, so a client knows it is subscribed.
      raw.write(': subscribed\n\n');
      let blocked = false;
      // Events written so far; after the replay's last one, `: live` says what follows is new.
      let written = 0;
      const pump = () => {
        while (!blocked && sub.queue.length && !raw.destroyed) {
          const e = sub.queue.shift()!;
          written++;
          blocked = !raw.write(
            `id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n${written === sub.replayed ? ': live\n\n' : ''}`,
          );
        }
      };
      const sub = hub.subscribe({
        filter,
        lastEventId: typeof lastEventId === 'string' ? lastEventId.slice(0, 100) : undefined,
        onEvent: pump,
        // Its queue is full: the socket has not taken what it was given. Drop it rather than
        // hold more; the client may reconnect with Last-Event-ID.
        onDrop: () => raw.destroy(),
      });
      raw.on('drain', () => {
        blocked = false;
        pump();
      });
      const keepalive = setInterval(() => {
        if (!blocked && !raw.destroyed) raw.write(': keepalive\n\n');
      }, api.config.eventsKeepaliveMs);
      keepalive.unref();
      raw.on('close', () => {
        clearInterval(keepalive);
        sub.close();
      });
      if (sub.replayed === 0) raw.write(': live\n\n');
      pump();
    },
  );
}
