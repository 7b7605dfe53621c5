/**
 * Shared skill packages and configuration in a real microVM (issue 14, acceptance 2), all real:
 * a control plane in this process (SQLite, the filesystem object store) and a host agent joined
 * to it, converging a real VM. A package pushed and assigned to a tenant through a channel is
 * fetched by the host with its host token, verified, made into a disk and attached; in the
 * guest it is at /opt/warren/skills/<name>/, read-only (EROFS), and
 * /run/warren/config/openclaw.json lists it in skills.load.extraDirs; a new template reaches
 * the running guest in place. A bundle changed in the host's cache or in the object store is
 * refused before attach, and the tenant says SKILL_INTEGRITY. One boot.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ControlLink, connectControlPlane, type Host, loadConfig, openHost } from '@warren/host-agent';
import { packSkillDir } from '@warren/images/skill-bundle';
import { vmIdOfTenant } from '@warren/protocol';
import { call, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { collect } from '../helpers/host.ts';
import { minimalImage, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

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
  let host: Host;
  let link: ControlLink;
  let dataDir: string;
  let work: string;
  let tenantId = '';
  let digest = '';
  const logs: string[] = [];

  const tenant = async (name: string) =>
    (await call(t.url, 'GET', `/v1/tenants/${name}`, { token: t.adminToken })).body;
  const guestSh = async (script: string, user?: string) => {
    const guest = await host.vms.guest(vmIdOfTenant(tenantId));
    const r = await collect((o) =>
      guest.exec({ argv: ['/usr/lib/warren/busybox', 'sh', '-c', script], ...(user ? { user } : {}) }, o),
    );
    return { ...r, exit: r.exit as { exitCode: number | null } };
  };

  before(async () => {
    const image = await minimalImage();
    work = await mkdtemp(join(tmpdir(), 'wsk-'));
    dataDir = await mkdtemp(join(tmpdir(), 'wt-'));
    t = await openTestControlPlane({ heartbeatIntervalMs: 300, defaultProfile: 'minimal' });
    host = await openHost(
      loadConfig(
        {},
        {
          dataDir,
          imagesDir: TEST_IMAGES_DIR,
          bootTimeoutMs: 90_000,
          controlPlaneUrl: t.url,
          joinToken: t.joinToken,
          hostName: 'skills-host',
          agentListen: '127.0.0.1:0',
          network: 'off',
          heartbeatMs: 300,
          capacityDiskMiB: 10_240,
        },
      ),
    );
    link = await connectControlPlane(host, (m) => logs.push(m), { retryInitialMs: 1000, retryMaxMs: 4000 });
    // Placement needs the host's first heartbeat, which names its images.
    await until('the host reported the test image', async () => {
      const hosts = (await call(t.url, 'GET', '/v1/hosts', { token: t.adminToken })).body.hosts;
      return hosts?.some((h: { images: string[] }) =>
        h.images.some((i) => image.startsWith(i) || i === image),
      );
    });
  });

  after(async () => {
    await link?.close();
    if (host) {
      for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
      host.vms.close();
    }
    await t?.close();
    for (const d of [work, dataDir]) if (d) await rm(d, { recursive: true, force: true });
  });

  test('a pushed package assigned through a channel is mounted read-only in the guest, with its config', async () => {
    await writePackage(join(work, 'team-tools'), 'v1');
    digest = await push(t, join(work, 'team-tools'), 'team-tools', '1.0.0');
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
    const started = performance.now();
    const created = await call(t.url, 'POST', '/v1/tenants', {
      token: t.adminToken,
      body: {
        name: 'skilled',
        memoryMiB: 512,
        diskMiB: 64,
        idleTimeout: 'never',
        skills: ['team-tools@stable'],
        config: { 'openclaw.json': { agents: { defaults: { workspace: '/workspace' } } } },
      },
    });
    assert.equal(created.status, 202, created.text);
    tenantId = created.body.tenant.id;
    await until('the tenant runs', async () => (await tenant('skilled')).state === 'running', 180_000);
    console.log(`create to running with one skill package: ${Math.round(performance.now() - started)} ms`);

    const read = await guestSh('cat /opt/warren/skills/team-tools/hello/SKILL.md', 'agent');
    assert.equal(read.exit.exitCode, 0, read.stderr);
    assert.equal(read.stdout, SKILL_MD);
    const run = await guestSh('/opt/warren/skills/team-tools/hello/scripts/run.sh', 'agent');
    assert.equal(run.stdout.trim(), 'v1', run.stderr);
    // Root in the guest cannot write it either: the disk itself is read-only.
    const write = await guestSh('echo x > /opt/warren/skills/team-tools/hello/SKILL.md');
    assert.notEqual(write.exit.exitCode, 0);
    assert.match(write.stderr, /Read-only file system/);
    const mkdirIn = await guestSh('mkdir /opt/warren/skills/team-tools/new');
    assert.match(mkdirIn.stderr, /Read-only file system/);
    const mounts = await guestSh('grep " /opt/warren/skills/team-tools " /proc/mounts');
    assert.match(mounts.stdout, /\bro\b/);

    const cfg = await guestSh('cat /run/warren/config/openclaw.json', 'agent');
    assert.equal(cfg.exit.exitCode, 0, cfg.stderr);
    const doc = JSON.parse(cfg.stdout);
    assert.deepEqual(doc.skills.load.extraDirs, ['/opt/warren/skills/team-tools']);
    assert.equal(doc.gateway.port, 18789);
    assert.equal(doc.agents.defaults.workspace, '/workspace');

    // The versions it runs, as `tenant show` reports them.
    const v = await call(t.url, 'GET', '/v1/tenants/skilled/versions', { token: t.adminToken });
    assert.deepEqual(v.body.skills, [
      { ref: 'team-tools@stable', name: 'team-tools', version: '1.0.0', digest },
    ]);

    // A new template version reaches the running guest in place, without a restart.
    await call(t.url, 'PUT', '/v1/config-templates/openclaw.json', {
      token: t.adminToken,
      body: { template: { gateway: { port: 18800, bind: 'lan' } } },
    });
    await until(
      'the new template is in the guest',
      async () =>
        JSON.parse((await guestSh('cat /run/warren/config/openclaw.json')).stdout).gateway.port === 18800,
      30_000,
    );
  });

  test('a channel set to apply at once restarts the VM onto the new version', async () => {
    await writePackage(join(work, 'team-tools-2'), 'v2');
    digest = await push(t, join(work, 'team-tools-2'), 'team-tools', '2.0.0');
    const ch = await call(t.url, 'PUT', '/v1/skills/team-tools/channels/stable', {
      token: t.adminToken,
      body: { version: '2.0.0', apply: 'now' },
    });
    assert.equal(ch.status, 200, ch.text);
    const started = performance.now();
    await until(
      'the guest runs version 2',
      async () =>
        (await guestSh('/opt/warren/skills/team-tools/hello/scripts/run.sh')).stdout.trim() === 'v2',
      180_000,
      500,
    );
    console.log(
      `channel apply-now to the new version in the guest: ${Math.round(performance.now() - started)} ms`,
    );
    assert.equal((await tenant('skilled')).state, 'running');
  });

  test('a bundle changed in the host cache is refused before attach', async () => {
    const stop = await call(t.url, 'POST', '/v1/tenants/skilled/stop', { token: t.adminToken });
    assert.equal(stop.status, 202, stop.text);
    await until('the tenant stopped', async () => (await tenant('skilled')).state === 'stopped', 120_000);
    const path = host.vms.skills.bundlePath(digest);
    const good = await readFile(path);
    await writeFile(path, flipByte(good, 700));
    await call(t.url, 'POST', '/v1/tenants/skilled/start', { token: t.adminToken });
    await until(
      'the tenant reports SKILL_INTEGRITY',
      async () => (await tenant('skilled')).lastError?.code === 'SKILL_INTEGRITY',
      60_000,
    );
    const tn = await tenant('skilled');
    assert.match(tn.lastError.message, /cached bundle/);
    assert.notEqual(tn.state, 'running');
    assert.notEqual((await host.vms.get(vmIdOfTenant(tenantId))).state, 'running');
    await call(t.url, 'POST', '/v1/tenants/skilled/stop', { token: t.adminToken });
    await writeFile(path, good);
  });

  test('a bundle changed in the object store is refused before attach', async () => {
    await writePackage(join(work, 'other'), 'other');
    const other = await push(t, join(work, 'other'), 'other', '2.0.0');
    const object = join(t.dataDir, 'objects', 'skills', 'sha256', other.slice('sha256:'.length));
    await writeFile(object, flipByte(await readFile(object), 600));
    const created = await call(t.url, 'POST', '/v1/tenants', {
      token: t.adminToken,
      body: { name: 'tampered', memoryMiB: 512, diskMiB: 64, skills: ['other@2.0.0'] },
    });
    assert.equal(created.status, 202, created.text);
    await until(
      'the tenant reports SKILL_INTEGRITY',
      async () => (await tenant('tampered')).lastError?.code === 'SKILL_INTEGRITY',
      60_000,
    );
    assert.match((await tenant('tampered')).lastError.message, /control plane served/);
    const vm = await host.vms.get(vmIdOfTenant(created.body.tenant.id));
    assert.notEqual(vm.state, 'running');
    await call(t.url, 'DELETE', '/v1/tenants/tampered', { token: t.adminToken });
  });
});
