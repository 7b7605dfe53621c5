/**
 * The host agent's skill disks against the real control plane (SQLite, the filesystem object
 * store), without a VM: a bundle fetched with a host token becomes an ext4 image holding the
 * package; a byte changed in the object store, in the cached bundle or in the cached disk image
 * is SKILL_INTEGRITY before anything could attach it. test/vm/skills.test.ts boots one.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ControlPlaneClient, SkillDisks } from '@warren/host-agent';
import { packSkillDir } from '@warren/images/skill-bundle';
import type { DesiredSkill } from '@warren/protocol';
import { call, FakeAgent, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';

const SKILL_MD = '---\nname: hello\ndescription: disk test\n---\n';

describe('skill disks on a host', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  let work: string;
  let skill: DesiredSkill;
  const disks = (dir: string) => {
    const client = new ControlPlaneClient(t.url);
    return new SkillDisks({ dataDir: dir, fetch: (d, max) => client.skillBundle(agent.token, d, max) });
  };
  const flip = async (path: string, at: number) => {
    const b = await readFile(path);
    b[at] = b[at]! ^ 0xff;
    await writeFile(path, b);
  };

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'wskd-'));
    t = await openTestControlPlane();
    agent = await new FakeAgent('disks', { vcpus: 8, memoryMiB: 8192, diskMiB: 100_000 }).start(
      t.url,
      t.joinToken,
    );
    await mkdir(join(work, 'pkg', 'hello'), { recursive: true });
    await writeFile(join(work, 'pkg', 'hello', 'SKILL.md'), SKILL_MD);
    const { bundle, digest } = await packSkillDir(join(work, 'pkg'));
    const r = await call(t.url, 'POST', '/v1/skills?name=tools&version=1.0.0', {
      token: t.adminToken,
      raw: bundle,
      contentType: 'application/octet-stream',
    });
    assert.equal(r.status, 201, r.text);
    skill = { name: 'tools', version: '1.0.0', digest, sizeBytes: bundle.length, applyNow: false };
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('a fetched bundle becomes an ext4 image of the package; a changed disk image is refused', async () => {
    const d = disks(join(work, 'host1'));
    const [disk] = await d.prepare([skill]);
    assert.ok(disk);
    const read = execFileSync('debugfs', ['-R', 'cat /hello/SKILL.md', disk.path], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    assert.equal(read.toString(), SKILL_MD);
    // Cached: the same image again, checked against its recorded sum.
    assert.equal((await d.prepare([skill]))[0]!.path, disk.path);
    await flip(disk.path, 2048);
    await assert.rejects(d.prepare([skill]), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'SKILL_INTEGRITY');
      assert.match(e.message, /disk image .* changed after it was built/);
      return true;
    });
  });

  test('a changed cached bundle is refused, and so is one changed in the object store', async () => {
    const d = disks(join(work, 'host2'));
    await d.prepare([skill]);
    await flip(d.bundlePath(skill.digest), 600);
    await assert.rejects(d.prepare([skill]), /cached bundle .* refused/);
    const object = join(t.dataDir, 'objects', 'skills', 'sha256', skill.digest.slice('sha256:'.length));
    await flip(object, 600);
    const fresh = disks(join(work, 'host3'));
    await assert.rejects(fresh.prepare([skill]), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'SKILL_INTEGRITY');
      assert.match(e.message, /control plane served/);
      return true;
    });
    // A longer object is cut at the catalog size plus one byte, and refused the same way.
    await writeFile(object, Buffer.alloc(skill.sizeBytes * 4, 7));
    await assert.rejects(disks(join(work, 'host4')).prepare([skill]), /control plane served/);
  });
});
