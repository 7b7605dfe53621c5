import type { AuditEvent } from '@warren/protocol';
import type { Selectable } from 'kysely';
import type { AuditEventsTable } from './store/database.ts';

/** An audit row as the API and the event stream show it. */
export function auditEventView(r: Selectable<AuditEventsTable>): AuditEvent {
  return {
    id: Number(r.id),
    at: r.at,
    actor: r.actor,
    action: r.action,
    target: r.target,
    tenantId: r.tenant_id,
    result: r.result,
    status: r.status,
    requestId: r.request_id,
  };
}
