import { AuditEvent, AuditQuery, parseOrThrow } from '@warren/protocol';
import { z } from 'zod';
import type { Http } from './http.ts';

const AuditList = z.object({ events: z.array(AuditEvent) });

export class Audit {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /** Newest first; page backwards with `before` set to the smallest id seen. */
  async list(query: z.input<typeof AuditQuery> = {}): Promise<AuditEvent[]> {
    const q = parseOrThrow(AuditQuery, query);
    return (await this.#http.json(AuditList, 'GET', '/v1/audit', { query: q })).events;
  }
}
