/**
 * Skill packages, channels and configuration through the real control plane (SQLite in a temp
 * dir, the filesystem object store) with fake host agents (issue 14): push and list, immutable
 * versions, who may fetch a bundle, a staged rollout over many tenants as their hosts' desired
 * lists carry it, and the versions each tenant runs.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { packSkillDir } from '@warren/images/skill-bundle';
import type { DesiredTenant } from '@warren/protocol';
import {
  call,
  createTenantWithKey,
  FAKE_IMAGE,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';

async function makePackage(dir: string, marker: string): Promise<Buffer> {
  await mkdir(join(dir, 'hello'), { recursive: true });
  await writeFile(join(dir, 'hello', 'SKILL.md'), `---\nname: hello\ndescription: ${marker}\n---\n`);
  return (await packSkillDir(dir)).bundle;
}

describe('skill packages and channels (API)', { timeout: 120_000 }, () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  let work: string;
  const bundles: Record<string, Buffer> = {};
  const push = (name: string, version: string, bundle: Buffer, token = t.adminToken) =>
    call(t.url, 'POST', `/v1/skills?name=${name}&version=${version}`, {
      token,
      raw: bundle,
      contentType: 'application/octet-stream',
    });

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'wska-'));
    t = await openTestControlPlane();
    agent = await new FakeAgent('skills-api', {
      vcpus: 1024,
      memoryMiB: 4 * 1024 * 1024,
      diskMiB: 1_000_000,
    }).start(t.url, t.joinToken);
    for (const v of ['1.0.0', '2.0.0', '3.0.0'])
      bundles[v] = await makePackage(join(work, v), `version ${v}`);
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('push stores a version once; the same content again is a no-op, other content is refused', async () => {
    const first = await push('tools', '1.0.0', bundles['1.0.0']!);
    assert.equal(first.status, 201, first.text);
    assert.equal(first.body.created, true);
    assert.deepEqual(first.body.package.skills, ['hello']);
    const again = await push('tools', '1.0.0', bundles['1.0.0']!);
    assert.equal(again.status, 201);
    assert.equal(again.body.created, false);
    const other = await push('tools', '1.0.0', bundles['2.0.0']!);
    assert.equal(other.status, 409);
    assert.equal(other.body.error.code, 'CONFLICT');
    assert.equal((await push('tools', '2.0.0', bundles['2.0.0']!)).status, 201);
    assert.equal((await push('tools', '3.0.0', bundles['3.0.0']!)).status, 201);
    const list = await call(t.url, 'GET', '/v1/skills', { token: t.adminToken });
    assert.deepEqual(
      list.body.packages.map((p: { version: string }) => p.version),
      ['1.0.0', '2.0.0', '3.0.0'],
    );
  });

  test('a bundle that is not a valid package is refused, and only the admin may push', async () => {
    const bad = await push('broken', '1.0.0', Buffer.from('not a tar archive'));
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.code, 'INVALID_ARGUMENT');
    const { key } = await createTenantWithKey(t, { name: 'pusher' });
    const denied = await push('tools', '9.0.0', bundles['1.0.0']!, key.token);
    assert.equal(denied.status, 403);
    const refs = await call(t.url, 'PATCH', '/v1/tenants/pusher', {
      token: key.token,
      body: { skills: ['tools@1.0.0'] },
    });
    assert.equal(refs.status, 403);
    const unknown = await call(t.url, 'PATCH', '/v1/tenants/pusher', {
      token: t.adminToken,
      body: { skills: ['tools@9.9.9'] },
    });
    assert.equal(unknown.status, 404, unknown.text);
    const noChannel = await call(t.url, 'PATCH', '/v1/tenants/pusher', {
      token: t.adminToken,
      body: { skills: ['tools@nightly'] },
    });
    assert.equal(noChannel.status, 404, noChannel.text);
  });

  test('only a host token fetches a bundle, and gets its exact bytes', async () => {
    const list = await call(t.url, 'GET', '/v1/skills?name=tools', { token: t.adminToken });
    const digest = list.body.packages[0].digest as string;
    const path = `/v1/agent/skills/${digest}`;
    const res = await fetch(`${t.url}${path}`, { headers: { authorization: `Bearer ${agent.token}` } });
    assert.equal(res.status, 200);
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(bundles['1.0.0']!));
    assert.equal((await call(t.url, 'GET', path, { token: t.adminToken })).status, 403);
    const missing = await call(t.url, 'GET', `/v1/agent/skills/sha256:${'0'.repeat(64)}`, {
      token: agent.token,
    });
    assert.equal(missing.status, 404);
  });

  test('a staged rollout reaches a stable subset of many tenants first, then all', async () => {
    const ch1 = await call(t.url, 'PUT', '/v1/skills/tools/channels/stable', {
      token: t.adminToken,
      body: { version: '1.0.0' },
    });
    assert.equal(ch1.status, 200, ch1.text);
    const N = 200;
    for (let i = 0; i < N; i++) {
      const r = await call(t.url, 'POST', '/v1/tenants', {
        token: t.adminToken,
        body: {
          name: `fleet-${i}`,
          image: FAKE_IMAGE,
          skills: ['tools@stable'],
          vcpus: 1,
          memoryMiB: 128,
          diskMiB: 64,
        },
      });
      assert.equal(r.status, 202, r.text);
    }
    const fleet = async () => {
      const hb = await agent.heartbeat();
      const mine = hb.tenants.filter((d: DesiredTenant) => d.name.startsWith('fleet-'));
      assert.equal(mine.length, N);
      return new Map(mine.map((d: DesiredTenant) => [d.tenantId, d.skills[0]?.version]));
    };
    for (const v of (await fleet()).values()) assert.equal(v, '1.0.0');

    const staged = await call(t.url, 'PUT', '/v1/skills/tools/channels/stable', {
      token: t.adminToken,
      body: { version: '2.0.0', rolloutPercent: 20 },
    });
    assert.equal(staged.status, 200, staged.text);
    assert.equal(staged.body.previousVersion, '1.0.0');
    const first = await fleet();
    const onNew = [...first].filter(([, v]) => v === '2.0.0').map(([id]) => id);
    assert.ok(onNew.length >= N * 0.1 && onNew.length <= N * 0.3, `${onNew.length} of ${N} at 20%`);
    assert.ok([...first.values()].every((v) => v === '1.0.0' || v === '2.0.0'));

    // Raised: the first stage stays in.
    await call(t.url, 'PUT', '/v1/skills/tools/channels/stable', {
      token: t.adminToken,
      body: { version: '2.0.0', rolloutPercent: 60 },
    });
    const second = await fleet();
    for (const id of onNew) assert.equal(second.get(id), '2.0.0');
    const secondCount = [...second.values()].filter((v) => v === '2.0.0').length;
    assert.ok(secondCount > onNew.length && secondCount < N, `${secondCount} at 60%`);

    // The versions API shows the drift.
    const versions = await call(t.url, 'GET', '/v1/tenant-versions', { token: t.adminToken });
    const fleetVersions = versions.body.tenants.filter((x: { name: string }) => x.name.startsWith('fleet-'));
    assert.equal(
      fleetVersions.filter((x: { skills: { version: string }[] }) => x.skills[0]!.version === '2.0.0').length,
      secondCount,
    );

    await call(t.url, 'PUT', '/v1/skills/tools/channels/stable', {
      token: t.adminToken,
      body: { version: '2.0.0', rolloutPercent: 100 },
    });
    for (const v of (await fleet()).values()) assert.equal(v, '2.0.0');
  });

  test('a pinned version does not follow the channel; apply now is carried to the host', async () => {
    await call(t.url, 'PATCH', '/v1/tenants/fleet-0', {
      token: t.adminToken,
      body: { skills: ['tools@1.0.0'] },
    });
    const ch = await call(t.url, 'PUT', '/v1/skills/tools/channels/stable', {
      token: t.adminToken,
      body: { version: '3.0.0', apply: 'now' },
    });
    assert.equal(ch.body.apply, 'now');
    const hb = await agent.heartbeat();
    const pinned = hb.tenants.find((d: DesiredTenant) => d.name === 'fleet-0')!;
    assert.equal(pinned.skills[0]!.version, '1.0.0');
    assert.equal(pinned.skills[0]!.applyNow, false);
    const follower = hb.tenants.find((d: DesiredTenant) => d.name === 'fleet-1')!;
    assert.equal(follower.skills[0]!.version, '3.0.0');
    assert.equal(follower.skills[0]!.applyNow, true);
  });

  test('configuration: templates are versioned, tenant values merge over them, versions show it', async () => {
    const t1 = await call(t.url, 'PUT', '/v1/config-templates/openclaw.json', {
      token: t.adminToken,
      body: { template: { gateway: { port: 18789, auth: { mode: 'token' } } } },
    });
    assert.equal(t1.body.version, 1);
    const t2 = await call(t.url, 'PUT', '/v1/config-templates/openclaw.json', {
      token: t.adminToken,
      body: { template: { gateway: { port: 18790, auth: { mode: 'token' } } } },
    });
    assert.equal(t2.body.version, 2);
    const upd = await call(t.url, 'PATCH', '/v1/tenants/fleet-2', {
      token: t.adminToken,
      body: { config: { 'openclaw.json': { gateway: { auth: null }, agents: { x: 1 } } } },
    });
    assert.equal(upd.status, 200, upd.text);
    const hb = await agent.heartbeat();
    const d = hb.tenants.find((x: DesiredTenant) => x.name === 'fleet-2')!;
    const doc = JSON.parse(d.config!.files.find((f) => f.name === 'openclaw.json')!.content);
    assert.deepEqual(doc, {
      gateway: { port: 18790 },
      agents: { x: 1 },
      skills: { load: { extraDirs: ['/opt/warren/skills/tools'] } },
    });
    const v = await call(t.url, 'GET', '/v1/tenants/fleet-2/versions', { token: t.adminToken });
    assert.equal(v.status, 200, v.text);
    assert.equal(v.body.image, FAKE_IMAGE);
    assert.deepEqual(v.body.config.templates, [{ file: 'openclaw.json', version: 2 }]);
    assert.equal(v.body.config.valuesVersion, 1);
    assert.equal(v.body.config.digest, d.config!.version);
    assert.equal(v.body.skills[0].ref, 'tools@stable');
    // A template that is not a JSON object is refused.
    const bad = await call(t.url, 'PUT', '/v1/config-templates/openclaw.json', {
      token: t.adminToken,
      body: { template: [1, 2] },
    });
    assert.equal(bad.status, 400);
    const badName = await call(t.url, 'PUT', '/v1/config-templates/..%2Fetc', {
      token: t.adminToken,
      body: { template: {} },
    });
    assert.equal(badName.status, 400);
  });
});
