import { Readable } from 'node:stream';
import {
  ConfigFileName,
  ConfigTemplate,
  PushSkillQuery,
  PushSkillResponse,
  parseOrThrow,
  SetChannelRequest,
  SetConfigTemplateRequest,
  SKILL_BUNDLE_LIMITS,
  SkillChannel,
  SkillChannelName,
  SkillDigest,
  SkillList,
  SkillName,
  TenantVersions,
  WarrenError,
} from '@warren/protocol';
import { z } from 'zod';
import type { Api } from '../context.ts';

/** Reads a raw upload into memory, refusing more than `limit` bytes as they arrive. */
async function readUpload(body: unknown, limit: number): Promise<Buffer> {
  if (!(body instanceof Readable))
    throw new WarrenError(
      'INVALID_ARGUMENT',
      'send the bundle as the body with content-type application/octet-stream',
    );
  const chunks: Buffer[] = [];
  let seen = 0;
  for await (const chunk of body) {
    seen += (chunk as Buffer).length;
    if (seen > limit) {
      body.destroy();
      throw new WarrenError('PAYLOAD_TOO_LARGE', `a skill bundle is at most ${limit} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Every host hears at once that desired state changed (a channel or template moved). */
async function wakeHosts(api: Api): Promise<void> {
  for (const h of await api.db.selectFrom('hosts').selectAll().execute()) api.agents.wake(h);
}

/** Skill packages, channels, configuration templates, and which versions tenants run. */
export function skillRoutes(api: Api): void {
  api.route(
    {
      method: 'POST',
      url: '/v1/skills',
      auth: 'admin',
      summary:
        'Push a skill package version: the body is its bundle (a ustar archive, as `warren skill push` packs it); versions are immutable',
      query: PushSkillQuery,
      streamBody: true,
      bodyLimit: SKILL_BUNDLE_LIMITS.maxBytes + 1,
      response: { status: 201, schema: PushSkillResponse },
      audit: 'skill.push',
    },
    async ({ query, req, audit }) => {
      audit.target = `${query.name}@${query.version}`;
      const bundle = await readUpload(req.body, SKILL_BUNDLE_LIMITS.maxBytes);
      return api.skills.push(query.name, query.version, bundle);
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/skills',
      auth: 'admin',
      summary: 'List skill packages and channels',
      query: z.strictObject({ name: SkillName.optional() }),
      response: { status: 200, schema: SkillList },
    },
    async ({ query }) => api.skills.list(query.name),
  );

  api.route(
    {
      method: 'PUT',
      url: '/v1/skills/:name/channels/:channel',
      auth: 'admin',
      summary:
        "Point a package's channel at a version, optionally as a staged rollout to a percentage of tenants",
      body: SetChannelRequest,
      response: { status: 200, schema: SkillChannel },
      audit: 'skill.channel.set',
    },
    async ({ params, body, audit }) => {
      const name = parseOrThrow(SkillName, params.name);
      const channel = parseOrThrow(SkillChannelName, params.channel);
      audit.target = `${name}@${channel}`;
      const ch = await api.skills.setChannel(name, channel, body);
      await wakeHosts(api);
      return ch;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/agent/skills/:digest',
      auth: 'host',
      summary: "A skill bundle's bytes, for a host agent to attach (it verifies the digest)",
      response: { status: 200, contentType: 'application/octet-stream' },
    },
    async ({ params, reply }) => {
      const digest = parseOrThrow(SkillDigest, params.digest);
      // No content-length: the object's own bytes are sent as they are, whatever the catalog
      // says its size is; the host agent checks them against the digest.
      const { stream } = await api.skills.bundle(digest);
      reply.header('content-type', 'application/octet-stream');
      return reply.status(200).send(stream);
    },
  );

  api.route(
    {
      method: 'PUT',
      url: '/v1/config-templates/:file',
      auth: 'admin',
      summary:
        'Set the platform-wide template of a configuration file (a JSON object; each set is a new version); tenants get it at once',
      body: SetConfigTemplateRequest,
      response: { status: 200, schema: ConfigTemplate },
      audit: 'config.template.set',
    },
    async ({ params, body, audit }) => {
      const file = parseOrThrow(ConfigFileName, params.file);
      audit.target = file;
      const t = await api.skills.setTemplate(file, body.template);
      await wakeHosts(api);
      return t;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/config-templates',
      auth: 'admin',
      summary: 'The newest version of each configuration template',
      response: { status: 200, schema: z.object({ templates: z.array(ConfigTemplate) }) },
    },
    async () => ({ templates: await api.skills.templates() }),
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/versions',
      auth: 'tenant',
      summary: "Which image, skill package versions and configuration version the tenant's VM gets",
      response: { status: 200, schema: TenantVersions },
    },
    async ({ tenant }) => (await api.skills.versions([tenant!]))[0],
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenant-versions',
      auth: 'admin',
      summary: 'Image, skill and configuration versions of every tenant, to see drift',
      response: { status: 200, schema: z.object({ tenants: z.array(TenantVersions) }) },
    },
    async () => {
      const rows = await api.db.selectFrom('tenants').selectAll().orderBy('name').execute();
      return { tenants: await api.skills.versions(rows) };
    },
  );
}
