/**
 * Shared skill packages and configuration in a real microVM (issue 14, acceptance 2): a package
 * pushed to a real control plane (SQLite, the filesystem object store) and assigned to a tenant
 * through a channel reaches the host as the heartbeat's desired list names it; the real host
 * agent fetches the bundle with its host token, verifies it, builds its disk and boots a real
 * VM with it. In the guest the package is at /opt/warren/skills/<name>/, read-only (EROFS),
 * and /run/warren/config/openclaw.json lists it in skills.load.extraDirs. A bundle changed in
 * the host's cache or in the object store is refused before any VM gets it. One boot.
 * (The fake agent here only stands in for heartbeats; the VM side is the real host agent.)
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ControlPlaneClient } from '@warren/host-agent';
import { packSkillDir } from '@warren/images/skill-bundle';
import type { DesiredTenant } from '@warren/protocol';
import { call, FAKE_IMAGE, FakeAgent, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { collect, openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';

const SKILL_MD = '---\nname: hello\ndescription: Says hello from a shared package.\n---\n\nSay hello.\n';

async function writePackage(dir: string, marker: string): Promise<void> {
  await mkdir(join(dir, 'hello', 'scripts'), { recursive: true });
  await writeFile(join(dir, 'hello', 'SKILL.md'), SKILL_MD);
  await writeFile(join(dir, 'hello', 'scripts', 'run.sh'), `#!/bin/sh\necho ${marker}\n`, { mode: 0o755 });
}

async function push(t: TestControlPlane, dir: string, name: string, version: string) {
  const { bundle, digest } = await packSkillDir(dir);
  const r = await call(t.url, 'POST', `/v1/skills?name=${name}&version=${version}`, {
    token: t.adminToken,
    raw: bundle,
    contentType: 'application/octet-stream',
  });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.body.package.digest, digest);
  return digest as string;
}

function flipByte(buf: Buffer, at: number): Buffer {
  const out = Buffer.from(buf);
  out[at] = out[at]! ^ 0xff;
  return out;
}

describe('skill packages in a microVM', { timeout: 600_000 }, () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  let host: TestHost;
  let image: string;
  let work: string;
  let desired: DesiredTenant;
  let vmId: string;

  before(async () => {
    image = await minimalImage();
    work = await mkdtemp(join(tmpdir(), 'wsk-'));
    t = await openTestControlPlane();
    agent = await new FakeAgent('skills-host', { vcpus: 16, memoryMiB: 32_768, diskMiB: 100_000 }).start(
      t.url,
      t.joinToken,
    );
    host = await openTestHost();
    const client = new ControlPlaneClient(t.url);
    host.vms.skills.setFetcher((digest, max) => client.skillBundle(agent.token, digest, max));
  });

  after(async () => {
    await host?.dispose();
    await agent?.stop();
    await t?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('a pushed package assigned through a channel is mounted read-only in the guest, with its config', async () => {
    await writePackage(join(work, 'team-tools'), 'v1');
    const digest = await push(t, join(work, 'team-tools'), 'team-tools', '1.0.0');
    const ch = await call(t.url, 'PUT', '/v1/skills/team-tools/channels/stable', {
      token: t.adminToken,
      body: { version: '1.0.0' },
    });
    assert.equal(ch.status, 200, ch.text);
    const tpl = await call(t.url, 'PUT', '/v1/config-templates/openclaw.json', {
      token: t.adminToken,
      body: { template: { gateway: { port: 18789, bind: 'lan' } } },
    });
    assert.equal(tpl.status, 200, tpl.text);
    const created = await call(t.url, 'POST', '/v1/tenants', {
      token: t.adminToken,
      body: {
        name: 'skilled',
        image: FAKE_IMAGE,
        skills: ['team-tools@stable'],
        config: { 'openclaw.json': { agents: { defaults: { workspace: '/workspace' } } } },
      },
    });
    assert.equal(created.status, 202, created.text);
    await agent.heartbeat();
    desired = agent.desired.find((d) => d.name === 'skilled')!;
    assert.deepEqual(
      desired.skills.map((s) => [s.name, s.version, s.digest]),
      [['team-tools', '1.0.0', digest]],
    );

    const vm = await host.vms.create({ image, memoryMiB: 512, diskMiB: 64 });
    vmId = vm.id;
    await host.vms.setSkills(vmId, desired.skills);
    host.vms.setConfig(vmId, desired.config);
    const started = performance.now();
    await host.vms.start(vmId);
    console.log(`boot with one skill package: ${Math.round(performance.now() - started)} ms`);
    const guest = await host.vms.guest(vmId);
    const sh = async (script: string, user?: string) => {
      const r = await collect((o) =>
        guest.exec({ argv: ['/usr/lib/warren/busybox', 'sh', '-c', script], ...(user ? { user } : {}) }, o),
      );
      return { ...r, exit: r.exit as { exitCode: number | null } };
    };

    const read = await sh('cat /opt/warren/skills/team-tools/hello/SKILL.md', 'agent');
    assert.equal(read.exit.exitCode, 0, read.stderr);
    assert.equal(read.stdout, SKILL_MD);
    const run = await sh('/opt/warren/skills/team-tools/hello/scripts/run.sh', 'agent');
    assert.equal(run.stdout.trim(), 'v1', run.stderr);
    // Root in the guest cannot write it either: the disk itself is read-only.
    const write = await sh('echo x > /opt/warren/skills/team-tools/hello/SKILL.md');
    assert.notEqual(write.exit.exitCode, 0);
    assert.match(write.stderr, /Read-only file system/);
    const mkdirIn = await sh('mkdir /opt/warren/skills/team-tools/new');
    assert.match(mkdirIn.stderr, /Read-only file system/);
    const mounts = await sh('grep " /opt/warren/skills/team-tools " /proc/mounts');
    assert.match(mounts.stdout, /\bro\b/);

    const cfg = await sh('cat /run/warren/config/openclaw.json', 'agent');
    assert.equal(cfg.exit.exitCode, 0, cfg.stderr);
    const doc = JSON.parse(cfg.stdout);
    assert.deepEqual(doc.skills.load.extraDirs, ['/opt/warren/skills/team-tools']);
    assert.equal(doc.gateway.port, 18789);
    assert.equal(doc.agents.defaults.workspace, '/workspace');
  });

  test('a bundle changed in the host cache is refused before attach', async () => {
    const s = desired.skills[0]!;
    await host.vms.stop(vmId);
    const path = host.vms.skills.bundlePath(s.digest);
    const good = await readFile(path);
    await writeFile(path, flipByte(good, 700));
    await assert.rejects(host.vms.start(vmId), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'SKILL_INTEGRITY');
      assert.match(e.message, /cached bundle/);
      return true;
    });
    assert.equal((await host.vms.get(vmId)).state, 'stopped');
    await writeFile(path, good);
  });

  test('a bundle changed in the object store is refused before attach', async () => {
    await writePackage(join(work, 'other'), 'other');
    const digest = await push(t, join(work, 'other'), 'other', '2.0.0');
    const object = join(t.dataDir, 'objects', 'skills', 'sha256', digest.slice('sha256:'.length));
    await writeFile(object, flipByte(await readFile(object), 600));
    const upd = await call(t.url, 'PATCH', '/v1/tenants/skilled', {
      token: t.adminToken,
      body: { skills: ['team-tools@1.0.0', 'other@2.0.0'] },
    });
    assert.equal(upd.status, 200, upd.text);
    await agent.heartbeat();
    const d = agent.desired.find((x) => x.name === 'skilled')!;
    await host.vms.setSkills(vmId, d.skills);
    await assert.rejects(host.vms.start(vmId), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'SKILL_INTEGRITY');
      assert.match(e.message, /control plane served/);
      return true;
    });
    assert.equal((await host.vms.get(vmId)).state, 'stopped');
  });
});
