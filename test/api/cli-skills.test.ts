/**
 * The skill and configuration commands as a user runs them (the bundled CLI, a separate
 * process) against a real control plane in this process and a fake host agent: the command
 * shapes issue 14 names (`warren skill push DIR --name N --version V`, `warren skill list`),
 * a channel with a staged rollout, a tenant referencing a channel, and the versions it runs.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { FAKE_IMAGE, type TestControlPlane } from '../helpers/api.ts';
import { type CliRun, type CliStage, openCliStage, runWarren } from '../helpers/cli.ts';

let stage: CliStage | undefined;
let t: TestControlPlane;
let dir = '';

before(async () => {
  stage = await openCliStage({ host: 'cli-skills', heartbeatMs: 50 });
  ({ t, dir } = stage);
});

after(() => stage?.close());

/** Runs `warren ARGS` with the admin token. */
function warren(args: string[]): Promise<CliRun> {
  return runWarren({ url: t.url, token: t.adminToken, scratch: dir }, args);
}

describe('warren skill', () => {
  test('push, list, channel set with a rollout, and a tenant on the channel', async () => {
    for (const v of ['1', '2']) {
      await mkdir(join(dir, `pkg${v}`, 'greet'), { recursive: true });
      await writeFile(
        join(dir, `pkg${v}`, 'greet', 'SKILL.md'),
        `---\nname: greet\ndescription: v${v}\n---\n`,
      );
    }
    const p1 = await warren(['skill', 'push', join(dir, 'pkg1'), '--name', 'greeter', '--version', '1.0.0']);
    assert.equal(p1.status, 0, p1.stderr);
    assert.match(p1.stdout, /^greeter@1\.0\.0 sha256:[0-9a-f]{64} .*skills: greet/);
    const again = await warren([
      'skill',
      'push',
      join(dir, 'pkg1'),
      '--name',
      'greeter',
      '--version',
      '1.0.0',
    ]);
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stdout, /already pushed/);
    const clash = await warren([
      'skill',
      'push',
      join(dir, 'pkg2'),
      '--name',
      'greeter',
      '--version',
      '1.0.0',
    ]);
    assert.notEqual(clash.status, 0);
    assert.match(clash.stderr, /CONFLICT/);
    assert.equal(
      (await warren(['skill', 'push', join(dir, 'pkg2'), '--name', 'greeter', '--version', '2.0.0'])).status,
      0,
    );
    const set1 = await warren(['skill', 'channel', 'set', 'greeter', 'stable', '1.0.0']);
    assert.equal(set1.status, 0, set1.stderr);
    const set2 = await warren(['skill', 'channel', 'set', 'greeter', 'stable', '2.0.0', '--rollout', '25%']);
    assert.equal(set2.status, 0, set2.stderr);
    assert.match(set2.stdout, /25% of its tenants \(the rest stay on 1\.0\.0\)/);
    const list = await warren(['skill', 'list']);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /greeter +1\.0\.0/);
    assert.match(list.stdout, /greeter@stable +2\.0\.0 +25% \(rest on 1\.0\.0\)/);

    await writeFile(join(dir, 'values.json'), JSON.stringify({ gateway: { port: 18789 } }));
    const created = await warren([
      'tenant',
      'create',
      'skilly',
      '--image',
      FAKE_IMAGE,
      '--skill',
      'greeter@stable',
      '--config',
      `openclaw.json=${join(dir, 'values.json')}`,
    ]);
    assert.equal(created.status, 0, created.stderr);
    const show = await warren(['tenant', 'show', 'skilly']);
    assert.equal(show.status, 0, show.stderr);
    assert.match(show.stdout, /skills: +greeter@stable -> greeter@[12]\.0\.0 \(sha256:[0-9a-f]{64}\)/);
    assert.match(show.stdout, /config: +sha256:[0-9a-f]{12} \(templates: -; tenant values v1\)/);
    const versions = await warren(['tenant', 'list', '--versions', '--json']);
    assert.equal(versions.status, 0, versions.stderr);
    const row = JSON.parse(versions.stdout).tenants.find((x: { name: string }) => x.name === 'skilly');
    assert.equal(row.image, FAKE_IMAGE);
  });
});
