import {
  ConfigTemplate,
  PushSkillResponse,
  parseOrThrow,
  SetChannelRequest,
  SkillChannel,
  SkillList,
  TenantVersions,
} from '@warren/protocol';
import { z } from 'zod';
import { type Http, path } from './http.ts';

const TemplateList = z.object({ templates: z.array(ConfigTemplate) });
const VersionList = z.object({ tenants: z.array(TenantVersions) });

/**
 * Shared skill packages (admin token): push a bundle (`packSkillDir` of
 * `@warren/images/skill-bundle` makes one from a directory), list, and point channels at
 * versions, optionally as a staged rollout. Tenants reference them as `name@version` or
 * `name@channel` (`tenants.create({ skills })`).
 */
export class Skills {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /** Stores `bundle` as name@version; the same content again is a no-op (`created: false`). */
  async push(name: string, version: string, bundle: Uint8Array): Promise<z.output<typeof PushSkillResponse>> {
    return this.#http.json(PushSkillResponse, 'POST', '/v1/skills', {
      query: { name, version },
      body: bundle as RequestInit['body'],
      contentType: 'application/octet-stream',
    });
  }

  async list(name?: string): Promise<SkillList> {
    return this.#http.json(SkillList, 'GET', '/v1/skills', { query: { name } });
  }

  async setChannel(name: string, channel: string, request: SetChannelRequest): Promise<SkillChannel> {
    const json = parseOrThrow(SetChannelRequest, request);
    return this.#http.json(SkillChannel, 'PUT', path`/v1/skills/${name}/channels/${channel}`, { json });
  }

  /** Sets the platform-wide template of a configuration file (a new version each time). */
  async setTemplate(file: string, template: Record<string, unknown>): Promise<ConfigTemplate> {
    return this.#http.json(ConfigTemplate, 'PUT', path`/v1/config-templates/${file}`, { json: { template } });
  }

  async templates(): Promise<ConfigTemplate[]> {
    return (await this.#http.json(TemplateList, 'GET', '/v1/config-templates')).templates;
  }

  /** Which image, skill versions and configuration one tenant runs. */
  async versions(tenant: string): Promise<TenantVersions> {
    return this.#http.json(TenantVersions, 'GET', path`/v1/tenants/${tenant}/versions`);
  }

  /** The same for every tenant (admin): drift across tenants. */
  async allVersions(): Promise<TenantVersions[]> {
    return (await this.#http.json(VersionList, 'GET', '/v1/tenant-versions')).tenants;
  }
}
