import type { FastifyInstance } from 'fastify';
import type { z } from 'zod';
import type { AgentClient } from '../agents/agent-client.ts';
import type { BackupService } from '../backups/service.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { EventHub } from '../events/hub.ts';
import type { EventPublisher } from '../events/publisher.ts';
import type { HostService } from '../hosts/service.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { SecretService } from '../secrets/service.ts';
import type { SkillService } from '../skills/service.ts';
import type { Db } from '../store/index.ts';
import type { TenantLocks, TenantStreams } from '../tenants/concurrency.ts';
import type { TenantService } from '../tenants/service.ts';
import type { TenantSessionService } from '../tenants/sessions.ts';
import type { SnapshotService } from '../tenants/snapshots.ts';
import type { RateLimiter } from './rate-limit.ts';
import { defineRoute, type RegisteredRoute, type RouteContext, type RouteSpec } from './route.ts';

/** What every route module gets: services, and `route()` bound to the app and registry. */
export interface Api {
  db: Db;
  config: ControlPlaneConfig;
  tenants: TenantService;
  hosts: HostService;
  agents: AgentClient;
  /** Per-credential request rate, checked by every authenticated route. */
  rateLimiter: RateLimiter;
  /** Per-tenant caps on open exec and dashboard streams. */
  streams: TenantStreams;
  /** One snapshot or session step per tenant at a time. */
  locks: TenantLocks;
  snapshots: SnapshotService;
  tenantSessions: TenantSessionService;
  backups: BackupService;
  /** The event stream (`GET /v1/events`) and what feeds it: routes `touch` what they changed. */
  hub: EventHub;
  events: EventPublisher;
  metrics: ControlPlaneMetrics;
  secrets: SecretService;
  /** Skill packages, channels, configuration templates (issue 14). */
  skills: SkillService;
  route<B extends z.ZodType | undefined = undefined, Q extends z.ZodType | undefined = undefined>(
    spec: RouteSpec<B, Q>,
    handler: (
      ctx: RouteContext<
        B extends z.ZodType ? z.output<B> : undefined,
        Q extends z.ZodType ? z.output<Q> : undefined
      >,
    ) => Promise<unknown>,
  ): void;
}

export function apiContext(
  app: FastifyInstance,
  registry: RegisteredRoute[],
  services: Omit<Api, 'route'>,
): Api {
  return {
    ...services,
    route: (spec, handler) => defineRoute(app, services, registry, spec, handler as never),
  };
}
