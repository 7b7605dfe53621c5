/**
 * The control plane's event stream: `GET /v1/events` (server-sent events). Every event carries
 * the whole resource as the API shows it at that moment, so a client (the console, `warren
 * events`) can upsert it into what it holds without another request.
 */
import { z } from 'zod';
import {
  AuditEvent,
  Host,
  HostHealth,
  HostId,
  Operation,
  ResourceName,
  Tenant,
  TenantId,
  TenantRef,
  TenantState,
} from './control-api.ts';

/**
 * `tenant.updated`: created, or its state, desired state, settings or error changed;
 * `tenant.deleted`: its record is gone (the host confirmed the delete, or the host was removed);
 * `operation.updated`: created, progressed or ended; `host.updated`: joined, health or draining
 * changed (admin only); `host.removed` (admin only); `audit.recorded`: a new audit log entry;
 * `stream.reset`: sent first when `Last-Event-ID` cannot be replayed (the id is older than the
 * buffer, or from before a control plane restart): events may have been missed, so re-read
 * what you show with the list routes.
 */
export const EventType = z.enum([
  'tenant.updated',
  'tenant.deleted',
  'operation.updated',
  'host.updated',
  'host.removed',
  'audit.recorded',
  'stream.reset',
]);
export type EventType = z.infer<typeof EventType>;

const envelope = {
  /**
   * `<stream>-<seq>`: `stream` is random per control-plane start, `seq` counts from 1. Send it
   * back as `Last-Event-ID` to resume (the SSE `id:` line carries it too).
   */
  id: z.string(),
  at: z.string(),
  /** The tenant the event belongs to; null for platform events (hosts), which only the admin sees. */
  tenantId: TenantId.nullable(),
};

export const TenantUpdatedEvent = z.object({
  ...envelope,
  type: z.literal('tenant.updated'),
  data: z.object({
    tenant: Tenant,
    /** The state before this change; null when the tenant was just created. */
    previousState: TenantState.nullable(),
  }),
});
export const TenantDeletedEvent = z.object({
  ...envelope,
  type: z.literal('tenant.deleted'),
  data: z.object({ tenantId: TenantId, tenantName: ResourceName }),
});
export const OperationUpdatedEvent = z.object({
  ...envelope,
  type: z.literal('operation.updated'),
  data: z.object({ operation: Operation }),
});
export const HostUpdatedEvent = z.object({
  ...envelope,
  type: z.literal('host.updated'),
  data: z.object({
    host: Host,
    /** The health before this change; null when the host just joined. */
    previousHealth: HostHealth.nullable(),
  }),
});
export const HostRemovedEvent = z.object({
  ...envelope,
  type: z.literal('host.removed'),
  data: z.object({ hostId: HostId, hostName: ResourceName }),
});
export const AuditRecordedEvent = z.object({
  ...envelope,
  type: z.literal('audit.recorded'),
  data: z.object({ event: AuditEvent }),
});
export const StreamResetEvent = z.object({
  ...envelope,
  type: z.literal('stream.reset'),
  data: z.object({ reason: z.enum(['unknown-id', 'too-old']) }),
});

export const PlatformEvent = z.discriminatedUnion('type', [
  TenantUpdatedEvent,
  TenantDeletedEvent,
  OperationUpdatedEvent,
  HostUpdatedEvent,
  HostRemovedEvent,
  AuditRecordedEvent,
  StreamResetEvent,
]);
export type PlatformEvent = z.infer<typeof PlatformEvent>;
/** One event type's full shape, e.g. `EventOf<'tenant.updated'>`. */
export type EventOf<T extends EventType> = Extract<PlatformEvent, { type: T }>;

/**
 * `GET /v1/events` query. `tenant`: only that tenant's events (id or name; a tenant key may name
 * only its own). `types`: comma-separated event types or families (`tenant`, `operation`, `host`,
 * `audit`); `stream.reset` is always sent.
 */
export const EventsQuery = z.strictObject({
  tenant: TenantRef.optional(),
  types: z
    .string()
    .max(300)
    .regex(/^[a-z.]+(,[a-z.]+)*$/, 'comma-separated event types, e.g. tenant,operation.updated')
    .optional(),
});
export type EventsQuery = z.infer<typeof EventsQuery>;

/** Does `type` match a `types` filter entry (an exact type or its family, the part before the dot)? */
export function eventTypeMatches(type: EventType, filter: readonly string[]): boolean {
  return type === 'stream.reset' || filter.some((f) => f === type || type.split('.')[0] === f);
}

/** The SSE content type of `GET /v1/events`. */
export const EVENTS_CONTENT_TYPE = 'text/event-stream';
