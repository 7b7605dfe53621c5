/**
 * `imageProfile` on tenant create (`warren tenant create mybot --image-profile openclaw`): the
 * newest image of that profile on a healthy host instead of the default profile's; and what an
 * OpenClaw tenant gets from the platform (issue 14): its gateway token, generated and held as a
 * secret, the gateway's allowed origin in its rendered openclaw.json, and the token handed to
 * the browser's Control UI by the dashboard login. A real control plane on SQLite with a fake
 * host agent reporting one image of each profile.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { OPENCLAW_WORKLOAD } from '@warren/protocol';
import {
  call,
  FAKE_IMAGE,
  FakeAgent,
  getWithHost,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';

const OPENCLAW_IMAGE = `sha256:${'cd'.repeat(32)}`;
const SMALL = { vcpus: 1, memoryMiB: 1024, diskMiB: 1000 };

/** A control plane whose one (fake) host has an image of the standard and of the openclaw profile. */
async function standUp(hostName: string): Promise<{ t: TestControlPlane; agent: FakeAgent }> {
  const t = await openTestControlPlane({ defaultProfile: 'standard' });
  const agent = new FakeAgent(hostName, { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 });
  agent.images = [FAKE_IMAGE, OPENCLAW_IMAGE];
  agent.imageProfiles.set(OPENCLAW_IMAGE, 'openclaw');
  try {
    await agent.start(t.url, t.joinToken);
  } catch (e) {
    await t.close();
    throw e;
  }
  return { t, agent };
}

describe('tenant create with an image profile', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  before(async () => {
    ({ t, agent } = await standUp('profile-host'));
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
  });

  const create = (body: Record<string, unknown>) =>
    call(t.url, 'POST', '/v1/tenants', { token: t.adminToken, body: { ...SMALL, ...body } });

  test('imageProfile picks that profile’s image; without it the default profile’s', async () => {
    const bot = await create({ name: 'mybot', imageProfile: 'openclaw' });
    assert.equal(bot.status, 202, bot.text);
    assert.equal(bot.body.tenant.imageId, OPENCLAW_IMAGE);
    const plain = await create({ name: 'plain' });
    assert.equal(plain.status, 202, plain.text);
    assert.equal(plain.body.tenant.imageId, FAKE_IMAGE);
  });

  test('an unknown profile is INVALID_ARGUMENT; one no host has is IMAGE_NOT_FOUND naming the build command; not with image', async () => {
    const unknown = await create({ name: 'nope', imageProfile: 'windows' });
    assert.equal(unknown.status, 400, unknown.text);
    assert.equal(unknown.body.error.code, 'INVALID_ARGUMENT');
    const missing = await create({ name: 'nope', imageProfile: 'minimal' });
    assert.equal(missing.status, 404, missing.text);
    assert.equal(missing.body.error.code, 'IMAGE_NOT_FOUND');
    assert.match(missing.body.error.message, /warren image build --profile minimal/);
    const both = await create({ name: 'nope', image: FAKE_IMAGE, imageProfile: 'openclaw' });
    assert.equal(both.status, 400, both.text);
    assert.equal(both.body.error.code, 'INVALID_ARGUMENT');
  });
});

describe('an OpenClaw tenant’s token and configuration', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  before(async () => {
    ({ t, agent } = await standUp('openclaw-host'));
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
  });

  const port = () => new URL(t.url).port;
  const origin = (name: string) => `http://${name}.dashboard.localhost:${port()}`;

  /** The one-time login link opened on the tenant's origin: the page it answers. */
  async function loginPage(name: string): Promise<{ status: number; body: string }> {
    const s = await call(t.url, 'POST', '/v1/sessions', { token: t.adminToken, body: { tenant: name } });
    assert.equal(s.status, 201, s.text);
    const link = new URL(s.body.loginUrl);
    assert.equal(link.origin, origin(name));
    return getWithHost(`${t.url}${link.pathname}${link.search}`, link.host);
  }

  async function gatewayToken(tenantId: string): Promise<string> {
    const r = await call(t.url, 'POST', '/v1/agent/secrets', { token: agent.token, body: { tenantId } });
    assert.equal(r.status, 200, r.text);
    const s = r.body.secrets.find((x: { name: string }) => x.name === OPENCLAW_WORKLOAD.tokenSecret);
    return s ? Buffer.from(s.value, 'base64').toString('utf8') : '';
  }

  test('create generates the gateway token as a secret, listed by name only, delivered to its host, and different per tenant', async () => {
    const tokens: string[] = [];
    for (const name of ['claw-a', 'claw-b']) {
      const r = await call(t.url, 'POST', '/v1/tenants', {
        token: t.adminToken,
        body: { ...SMALL, name, imageProfile: 'openclaw' },
      });
      assert.equal(r.status, 202, r.text);
      const listed = await call(t.url, 'GET', `/v1/tenants/${name}/secrets`, { token: t.adminToken });
      assert.equal(listed.status, 200, listed.text);
      assert.deepEqual(
        listed.body.secrets.map((x: { name: string; version: number }) => [x.name, x.version]),
        [[OPENCLAW_WORKLOAD.tokenSecret, 1]],
      );
      const hb = await agent.heartbeat();
      const desired = hb.tenants.find((x) => x.tenantId === r.body.tenant.id)!;
      assert.equal(desired.secretsGeneration, 1, 'the first heartbeat already asks the host to fetch it');
      const token = await gatewayToken(r.body.tenant.id);
      assert.match(token, /^[A-Za-z0-9_-]{43}$/);
      assert.ok(!listed.text.includes(token) && !r.text.includes(token));
      tokens.push(token);
    }
    assert.notEqual(tokens[0], tokens[1]);
    // A plain tenant gets no token.
    const plain = await call(t.url, 'POST', '/v1/tenants', {
      token: t.adminToken,
      body: { ...SMALL, name: 'plain' },
    });
    assert.equal(plain.status, 202, plain.text);
    const none = await call(t.url, 'GET', '/v1/tenants/plain/secrets', { token: t.adminToken });
    assert.deepEqual(none.body.secrets, []);
  });

  test('its openclaw.json allows the tenant’s dashboard origin, under the template and the tenant’s values', async () => {
    const hb = await agent.heartbeat();
    const tenants = (await call(t.url, 'GET', '/v1/tenants', { token: t.adminToken })).body.tenants as {
      id: string;
      name: string;
    }[];
    const idOf = (n: string) => tenants.find((x) => x.name === n)!.id;
    const config = (n: string) => hb.tenants.find((x) => x.tenantId === idOf(n))!.config;
    const doc = JSON.parse(config('claw-a')!.files.find((f) => f.name === 'openclaw.json')!.content);
    assert.deepEqual(doc.gateway.controlUi.allowedOrigins, [origin('claw-a')]);
    assert.equal(config('plain') ?? null, null, 'a plain tenant gets no openclaw.json');
    // A template adds keys; the tenant's own values still win over the platform's default.
    const tpl = await call(t.url, 'PUT', '/v1/config-templates/openclaw.json', {
      token: t.adminToken,
      body: { template: { agents: { defaults: { model: 'x/y' } } } },
    });
    assert.equal(tpl.status, 200, tpl.text);
    const own = await call(t.url, 'PATCH', '/v1/tenants/claw-b', {
      token: t.adminToken,
      body: {
        config: { 'openclaw.json': { gateway: { controlUi: { allowedOrigins: ['https://b.example'] } } } },
      },
    });
    assert.equal(own.status, 200, own.text);
    const hb2 = await agent.heartbeat();
    const conf = (n: string) =>
      JSON.parse(
        hb2.tenants
          .find((x) => x.tenantId === idOf(n))!
          .config!.files.find((f) => f.name === 'openclaw.json')!.content,
      );
    assert.deepEqual(conf('claw-a'), {
      gateway: { controlUi: { allowedOrigins: [origin('claw-a')] } },
      agents: { defaults: { model: 'x/y' } },
    });
    assert.deepEqual(conf('claw-b').gateway.controlUi.allowedOrigins, ['https://b.example']);
  });

  test('the dashboard login hands an OpenClaw tenant’s browser its gateway token in the fragment; others go to /', async () => {
    const tenants = (await call(t.url, 'GET', '/v1/tenants', { token: t.adminToken })).body.tenants as {
      id: string;
      name: string;
    }[];
    const token = await gatewayToken(tenants.find((x) => x.name === 'claw-a')!.id);
    const page = await loginPage('claw-a');
    assert.equal(page.status, 200, page.body);
    assert.ok(page.body.includes(`content="0;url=/#token=${token}"`), page.body);
    // A token the owner set, with characters HTML and URLs treat specially, stays inert.
    const odd = `a"b<c>&d'e f#g`;
    const set = await call(t.url, 'PUT', `/v1/tenants/claw-a/secrets/${OPENCLAW_WORKLOAD.tokenSecret}`, {
      token: t.adminToken,
      body: { value: odd },
    });
    assert.equal(set.status, 200, set.text);
    const again = await loginPage('claw-a');
    assert.ok(
      again.body.includes(`url=/#token=${encodeURIComponent(odd).replace(/'/g, '&#39;')}"`),
      again.body,
    );
    assert.ok(!again.body.includes('<c>') && !again.body.includes('b"'));
    const plain = await loginPage('plain');
    assert.equal(plain.status, 200, plain.body);
    assert.ok(plain.body.includes('content="0;url=/"'), plain.body);
  });
});
