/**
 * `imageProfile` on tenant create (`warren tenant create mybot --image-profile openclaw`): the
 * newest image of that profile on a healthy host instead of the default profile's. A real
 * control plane on SQLite with a fake host agent reporting one image of each profile.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { call, FAKE_IMAGE, FakeAgent, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';

const OPENCLAW_IMAGE = `sha256:${'cd'.repeat(32)}`;
const SMALL = { vcpus: 1, memoryMiB: 1024, diskMiB: 1000 };

describe('tenant create with an image profile', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  before(async () => {
    t = await openTestControlPlane({ defaultProfile: 'standard' });
    agent = new FakeAgent('profile-host', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 });
    agent.images = [FAKE_IMAGE, OPENCLAW_IMAGE];
    agent.imageProfiles.set(OPENCLAW_IMAGE, 'openclaw');
    await agent.start(t.url, t.joinToken);
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
