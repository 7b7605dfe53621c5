import { HealthResponse, WarrenError } from '@warren/protocol';
import type { z } from 'zod';
import { Audit } from './audit.ts';
import { Backups } from './backups.ts';
import { Events } from './events.ts';
import { Hosts } from './hosts.ts';
import { Http } from './http.ts';
import { JoinTokens } from './join-tokens.ts';
import { Keys } from './keys.ts';
import { Operations } from './operations.ts';
import { Secrets } from './secrets.ts';
import { Skills } from './skills.ts';
import { Sessions, Snapshots } from './snapshots.ts';
import { Tenants } from './tenants.ts';

export interface WarrenClientOptions {
  /** Base URL of the control plane; WARREN_API_URL when absent. */
  url?: string;
  /** Admin token or tenant API key; WARREN_TOKEN when absent. */
  token?: string;
  /** Replaces the global fetch. */
  fetch?: typeof fetch;
}

/**
 * The Warren control-plane API, one property per area:
 *
 * ```ts
 * const warren = new WarrenClient({ url: 'http://127.0.0.1:7070', token });
 * const { operation } = await warren.tenants.create({ name: 'demo' });
 * await warren.operations.wait(operation.id);
 * const exit = await warren.tenants.exec('demo', { argv: ['uname', '-r'] }, { onStdout: (b) => process.stdout.write(b) });
 * ```
 *
 * Every failure is a WarrenError with a registry code (`err.code`, `err.fix`).
 */
export class WarrenClient {
  readonly url: string;
  readonly tenants: Tenants;
  readonly operations: Operations;
  readonly hosts: Hosts;
  readonly keys: Keys;
  readonly joinTokens: JoinTokens;
  readonly audit: Audit;
  readonly snapshots: Snapshots;
  /** Safe-YOLO sessions (`/v1/tenants/{t}/sessions`), not the dashboard's browser sessions. */
  readonly sessions: Sessions;
  /** Backups and restores (`/v1/tenants/{t}/backups`). */
  readonly backups: Backups;
  /** The event stream (`GET /v1/events`). */
  readonly events: Events;
  /** Tenant secrets (`/v1/tenants/{t}/secrets`): set, list (names and versions), remove. */
  readonly secrets: Secrets;
  /** Shared skill packages, channels, configuration templates and tenant versions. */
  readonly skills: Skills;
  readonly #http: Http;

  constructor(options: WarrenClientOptions = {}) {
    const url = options.url ?? process.env.WARREN_API_URL;
    if (!url) {
      throw new WarrenError('INVALID_ARGUMENT', 'no Warren API URL: pass { url } or set WARREN_API_URL');
    }
    const http = new Http({
      url,
      token: options.token ?? process.env.WARREN_TOKEN,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    });
    this.#http = http;
    this.url = http.baseUrl;
    this.tenants = new Tenants(http);
    this.operations = new Operations(http);
    this.hosts = new Hosts(http);
    this.keys = new Keys(http);
    this.joinTokens = new JoinTokens(http);
    this.audit = new Audit(http);
    this.snapshots = new Snapshots(http);
    this.sessions = new Sessions(http, this.tenants);
    this.backups = new Backups(http);
    this.events = new Events(http);
    this.secrets = new Secrets(http);
    this.skills = new Skills(http);
  }

  async health(): Promise<z.output<typeof HealthResponse>> {
    return this.#http.json(HealthResponse, 'GET', '/v1/health');
  }
}
