/**
 * Issue 13's command shapes as a user runs them (node_modules/.bin/warren, the bundled CLI, a
 * separate process) against a real control plane in this process and fake host agents:
 * `tenant create/update --idle-timeout`, state `suspended` in `tenant show --json`, start
 * attempts in `tenant show`, suspended memory in `host list`, `host show` listing quarantined
 * VMs, `host adopt` and `host remove`.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  call,
  convergeAllRunning,
  FAKE_IMAGE,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { type CliRun, runWarren } from '../helpers/cli.ts';

let t: TestControlPlane;
let agent: FakeAgent;
let dir = '';

before(async () => {
  t = await openTestControlPlane({ idleTimeout: '30m' });
  agent = await new FakeAgent('cli-host', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 }).start(
    t.url,
    t.joinToken,
  );
  dir = await mkdtemp(join(tmpdir(), 'wt-cli-hosts-'));
});

after(async () => {
  await agent?.stop();
  await t?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Runs `warren ARGS` with the admin token. */
function warren(args: string[]): Promise<CliRun> {
  return runWarren({ url: t.url, token: t.adminToken, scratch: dir }, args);
}

async function tenantId(name: string): Promise<string> {
  return (await call(t.url, 'GET', `/v1/tenants/${name}`, { token: t.adminToken })).body.id;
}

describe('warren tenant --idle-timeout', () => {
  test('create and update take 20s|15m|never (and default on update); a bad one is a usage error', async () => {
    // --no-wait: the fake agent converges only when it heartbeats.
    const made = await warren([
      'tenant',
      'create',
      'idle-a',
      '--image',
      FAKE_IMAGE,
      '--idle-timeout',
      '20s',
      '--no-wait',
    ]);
    assert.equal(made.status, 0, made.stderr);
    let shown = JSON.parse((await warren(['tenant', 'show', 'idle-a', '--json'])).stdout);
    assert.deepEqual(shown.idleTimeout, { setting: '20s', effective: '20s' });

    const bad = await warren(['tenant', 'create', 'idle-b', '--image', FAKE_IMAGE, '--idle-timeout', '5s']);
    assert.equal(bad.status, 2);
    assert.match(
      bad.stderr,
      /INVALID_ARGUMENT: --idle-timeout: idle timeout 5s is shorter than the minimum of 10s/,
    );

    const never = await warren(['tenant', 'update', 'idle-a', '--idle-timeout', 'never']);
    assert.equal(never.status, 0, never.stderr);
    assert.equal(never.stdout, 'idle-a: idle timeout never\n');
    const m = await warren(['tenant', 'update', 'idle-a', '--idle-timeout', '15m']);
    assert.equal(m.stdout, 'idle-a: idle timeout 15m\n');
    await agent.heartbeat();
    assert.equal(agent.desired.find((d) => d.name === 'idle-a')!.idleTimeoutMs, 15 * 60_000);
    const dflt = await warren(['tenant', 'update', 'idle-a', '--idle-timeout', 'default']);
    assert.equal(dflt.stdout, 'idle-a: idle timeout 30m (the platform default)\n');
    shown = JSON.parse((await warren(['tenant', 'show', 'idle-a', '--json'])).stdout);
    assert.deepEqual(shown.idleTimeout, { setting: null, effective: '30m' });
    const human = await warren(['tenant', 'show', 'idle-a']);
    assert.match(human.stdout, /^idle: {7}suspends after 30m \(platform default\)$/m);
    const nothing = await warren(['tenant', 'update', 'idle-a']);
    assert.equal(nothing.status, 2);
  });
});

describe('warren tenant show and host list with suspended tenants and failed starts', () => {
  test('state suspended in tenant show --json; host list shows the memory suspended tenants give back', async () => {
    const made = await warren([
      'tenant',
      'create',
      'sleepy',
      '--image',
      FAKE_IMAGE,
      '--memory',
      '2048',
      '--no-wait',
    ]);
    assert.equal(made.status, 0, made.stderr);
    await convergeAllRunning(t, [agent]);
    agent.report.set(await tenantId('sleepy'), { state: 'suspended' });
    await agent.heartbeat();
    const shown = JSON.parse((await warren(['tenant', 'show', 'sleepy', '--json'])).stdout);
    assert.equal(shown.state, 'suspended');
    assert.equal(shown.desiredState, 'running');
    const list = await warren(['host', 'list']);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /SUSPENDED/);
    assert.match(list.stdout, /2048 MiB \(1\)/);
    agent.report.delete(await tenantId('sleepy'));
    await agent.heartbeat();
  });

  test('tenant show says how many start attempts failed and when the next is, or that the host gave up', async () => {
    const id = await tenantId('sleepy');
    const error = { code: 'DISK_FULL', message: 'no space left on /var/lib/warren' };
    agent.report.set(id, {
      state: 'failed',
      error,
      attempts: { count: 3, nextAttemptAt: '2026-12-02T15:00:00.000Z' },
    });
    await agent.heartbeat();
    let shown = await warren(['tenant', 'show', 'sleepy']);
    assert.match(
      shown.stdout,
      /^last error: DISK_FULL: no space left on \/var\/lib\/warren \(3 attempts, next at 2026-12-02T15:00:00.000Z\)$/m,
    );
    agent.report.set(id, { state: 'failed', error, attempts: { count: 4, nextAttemptAt: null } });
    await agent.heartbeat();
    shown = await warren(['tenant', 'show', 'sleepy']);
    assert.match(shown.stdout, /\(4 attempts; gave up, run `warren tenant start sleepy` to try again\)$/m);
    agent.report.delete(id);
    await agent.heartbeat();
  });
});

describe('warren host show, adopt, remove', () => {
  test('host show lists quarantined VMs; host adopt makes one a tenant again', async () => {
    agent.quarantined = [
      {
        vmId: 'ten-00000000000000aa',
        tenantId: 'ten_00000000000000aa',
        imageId: FAKE_IMAGE,
        vcpus: 2,
        memoryMiB: 2048,
        diskMiB: 3000,
        quarantinedAt: '2026-12-01T10:00:00.000Z',
        removeAfter: '2026-12-08T10:00:00.000Z',
      },
    ];
    await agent.heartbeat();
    const shown = await warren(['host', 'show', 'cli-host']);
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /^quarantined: 1 VM\(s\), below$/m);
    assert.match(shown.stdout, /^VM +TENANT +SIZE +QUARANTINED-AT +REMOVED-AFTER$/m);
    assert.match(
      shown.stdout,
      /^ten-00000000000000aa {2}ten_00000000000000aa {2}2 vCPU, 2048 MiB, 3000 MiB disk {2}2026-12-01T10:00:00.000Z {2}2026-12-08T10:00:00.000Z$/m,
    );
    const json = JSON.parse((await warren(['host', 'show', 'cli-host', '--json'])).stdout);
    assert.equal(json.quarantined[0].vmId, 'ten-00000000000000aa');

    const noName = await warren(['host', 'adopt', 'cli-host', 'ten-00000000000000aa']);
    assert.equal(noName.status, 2);
    const adopted = await warren(['host', 'adopt', 'cli-host', 'ten-00000000000000aa', '--name', 'rescued']);
    assert.equal(adopted.status, 0, adopted.stderr);
    assert.match(
      adopted.stdout,
      /adopted ten-00000000000000aa as tenant rescued \(ten_00000000000000aa\), stopped/,
    );
    agent.quarantined = [];
    await agent.heartbeat();
    const after = await warren(['host', 'show', 'cli-host']);
    assert.match(after.stdout, /^quarantined: none$/m);
    assert.match(after.stdout, /^tenants: {5}3 \(0 suspended\)$/m);
  });

  test('host remove is refused while the host heartbeats, --force removes it and names the lost tenants', async () => {
    const refused = await warren(['host', 'remove', 'cli-host']);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /CONFLICT: host cli-host still heartbeats/);
    const forced = await warren(['host', 'remove', 'cli-host', '--force']);
    assert.equal(forced.status, 0, forced.stderr);
    assert.equal(
      forced.stdout,
      'removed host cli-host\nlost tenants (restore each from a backup: warren tenant restore NAME BACKUP, or delete it): idle-a, rescued, sleepy\n',
    );
    const lost = JSON.parse((await warren(['tenant', 'show', 'sleepy', '--json'])).stdout);
    assert.equal(lost.state, 'lost');
    assert.equal(lost.lastError.code, 'HOST_LOST');
    const del = await warren(['tenant', 'delete', 'sleepy']);
    assert.equal(del.status, 0, del.stderr);
    const gone = await warren(['tenant', 'show', 'sleepy']);
    assert.equal(gone.status, 1);
    assert.match(gone.stderr, /NOT_FOUND/);
  });
});
