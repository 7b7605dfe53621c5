/**
 * Issue 13, the control plane's side: idle timeouts (validation, the tenant view, the desired
 * state hosts get), suspended tenants (still served; their memory free for placement), failed
 * start attempts, health transitions in the audit trail, quarantined VMs (listed, adopted) and
 * host removal (tenants lost, then restored onto another host or deleted). A real control plane
 * on SQLite with fake host agents that report what each test needs.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '@warren/control-plane';
import { vmIdOfTenant } from '@warren/protocol';
import {
  call,
  converge,
  convergeAllRunning,
  createTenantWithKey,
  FAKE_IMAGE,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { until } from '../helpers/until.ts';

const SMALL = { image: FAKE_IMAGE, vcpus: 1, memoryMiB: 1024, diskMiB: 1000 };

describe('idle timeout', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  before(async () => {
    t = await openTestControlPlane({ idleTimeout: '30m' });
    agent = await new FakeAgent('idle-host', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 }).start(
      t.url,
      t.joinToken,
    );
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
  });

  test('bad durations are INVALID_ARGUMENT saying what is accepted; too short names the minimum', async () => {
    for (const [value, pattern] of [
      ['5s', /shorter than the minimum of 10s/],
      ['15', /give a duration like 20s, 15m, 2h or 1d, or never/],
      ['abc', /give a duration like/],
      ['-1m', /give a duration like/],
      ['31d', /longer than the maximum of 30d; use never/],
    ] as const) {
      const r = await call(t.url, 'POST', '/v1/tenants', {
        token: t.adminToken,
        body: { name: 'bad-idle', ...SMALL, idleTimeout: value },
      });
      assert.equal(r.status, 400, `${value}: ${r.text}`);
      assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
      assert.match(r.body.error.message, pattern);
    }
    assert.throws(() => loadConfig({ WARREN_IDLE_TIMEOUT: '3s' }), /WARREN_IDLE_TIMEOUT: .*minimum/);
    assert.equal(loadConfig({ WARREN_IDLE_TIMEOUT: 'never' }).idleTimeout, 'never');
  });

  test('round trip: create with one, the view shows setting and effective value, hosts get it in ms', async () => {
    const { key } = await createTenantWithKey(t, { name: 'idle-own', ...SMALL, idleTimeout: '15m' });
    await createTenantWithKey(t, { name: 'idle-default', ...SMALL });
    await createTenantWithKey(t, { name: 'idle-never', ...SMALL, idleTimeout: 'never' });
    const own = (await call(t.url, 'GET', '/v1/tenants/idle-own', { token: t.adminToken })).body;
    assert.deepEqual(own.idleTimeout, { setting: '15m', effective: '15m' });
    const dflt = (await call(t.url, 'GET', '/v1/tenants/idle-default', { token: t.adminToken })).body;
    assert.deepEqual(dflt.idleTimeout, { setting: null, effective: '30m' });
    const never = (await call(t.url, 'GET', '/v1/tenants/idle-never', { token: t.adminToken })).body;
    assert.deepEqual(never.idleTimeout, { setting: 'never', effective: 'never' });
    await agent.heartbeat();
    const desired = (name: string) => agent.desired.find((d) => d.name === name)!.idleTimeoutMs;
    assert.equal(desired('idle-own'), 15 * 60_000);
    assert.equal(desired('idle-default'), 30 * 60_000);
    assert.equal(desired('idle-never'), null);

    // The tenant's own key may change its idle timeout, and only that.
    const mine = await call(t.url, 'PATCH', '/v1/tenants/idle-own', {
      token: key.token,
      body: { idleTimeout: '2h' },
    });
    assert.equal(mine.status, 200, mine.text);
    assert.deepEqual(mine.body.idleTimeout, { setting: '2h', effective: '2h' });
    const net = await call(t.url, 'PATCH', '/v1/tenants/idle-own', {
      token: key.token,
      body: { network: { egress: 'none' } },
    });
    assert.equal(net.status, 403, net.text);
    assert.equal(net.body.error.code, 'FORBIDDEN');
    const tooShort = await call(t.url, 'PATCH', '/v1/tenants/idle-own', {
      token: key.token,
      body: { idleTimeout: '1s' },
    });
    assert.equal(tooShort.status, 400);
    await agent.heartbeat();
    assert.equal(desired('idle-own'), 2 * 3600_000);
    // null goes back to the platform default.
    const back = await call(t.url, 'PATCH', '/v1/tenants/idle-own', {
      token: t.adminToken,
      body: { idleTimeout: null },
    });
    assert.deepEqual(back.body.idleTimeout, { setting: null, effective: '30m' });
    await agent.heartbeat();
    assert.equal(desired('idle-own'), 30 * 60_000);
  });
});

describe('suspended tenants', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  const ids = new Map<string, string>();
  const keys = new Map<string, string>();
  before(async () => {
    // A short dashboard timeout, and enough wake slack for the fake agent's slow first byte.
    t = await openTestControlPlane({ dashboardTimeoutMs: 300, wakeTimeoutMs: 10_000 });
    // Room for 4 tenants of 1 GiB memory and 1 vCPU; disk for 12.
    agent = await new FakeAgent('small-host', { vcpus: 4, memoryMiB: 4096, diskMiB: 12_000 }).start(
      t.url,
      t.joinToken,
    );
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
  });

  const host = async () =>
    (await call(t.url, 'GET', `/v1/hosts/${agent.name}`, { token: t.adminToken })).body;
  const tenant = async (name: string) =>
    (await call(t.url, 'GET', `/v1/tenants/${name}`, { token: t.adminToken })).body;
  const create = async (name: string) =>
    call(t.url, 'POST', '/v1/tenants', { token: t.adminToken, body: { name, ...SMALL } });
  const suspend = (name: string) => agent.report.set(ids.get(name)!, { state: 'suspended' });

  test('suspended tenants give their memory and vCPUs back to placement, not their disk: a host with room for 4 holds more', async () => {
    for (let i = 0; i < 4; i++) {
      const { created, key } = await createTenantWithKey(t, { name: `s-${i}`, ...SMALL });
      ids.set(`s-${i}`, created.tenant.id);
      keys.set(`s-${i}`, key.token);
    }
    await convergeAllRunning(t, [agent]);
    const full = await create('s-extra');
    assert.equal(full.status, 409, full.text);
    assert.equal(full.body.error.code, 'NO_CAPACITY');

    for (const n of ['s-0', 's-1', 's-2']) suspend(n);
    await agent.heartbeat();
    assert.equal((await tenant('s-0')).state, 'suspended');
    assert.equal((await tenant('s-0')).desiredState, 'running');
    const h = await host();
    assert.deepEqual(h.allocated, { vcpus: 4, memoryMiB: 4096, diskMiB: 4000 });
    assert.deepEqual(h.suspended, { tenants: 3, vcpus: 3, memoryMiB: 3072 });

    for (let i = 4; i < 7; i++) {
      const r = await create(`s-${i}`);
      assert.equal(r.status, 202, r.text);
      ids.set(`s-${i}`, r.body.tenant.id);
      assert.equal(r.body.tenant.hostId, agent.hostId);
    }
    // Memory is full again (4 awake); disk still counts all 7.
    const again = await create('s-extra');
    assert.equal(again.status, 409);
    assert.equal((await host()).allocated.diskMiB, 7000);

    // Waking one takes its memory back (the host is then overbooked until another suspends).
    agent.report.delete(ids.get('s-0')!);
    await agent.heartbeat();
    const woke = await host();
    assert.deepEqual(woke.suspended, { tenants: 2, vcpus: 2, memoryMiB: 2048 });
    assert.equal(woke.allocated.memoryMiB, 7 * 1024);
  });

  test('the suspended hold is recomputed, not moved: deleting a suspended tenant leaves nothing behind', async () => {
    const del = await call(t.url, 'DELETE', '/v1/tenants/s-1', { token: t.adminToken });
    assert.equal(del.status, 202, del.text);
    // No longer suspended the moment it is being deleted: its memory is not placed twice.
    assert.deepEqual((await host()).suspended, { tenants: 1, vcpus: 1, memoryMiB: 1024 });
    agent.report.delete(ids.get('s-1')!);
    await converge([agent], async () => (await tenant('s-1')).error?.code === 'NOT_FOUND');
    const h = await host();
    assert.deepEqual(h.suspended, { tenants: 1, vcpus: 1, memoryMiB: 1024 });
    assert.equal(h.allocated.memoryMiB, 6 * 1024);
    // The sum over the tenants' states is what the host shows, whatever happened before.
    const list = (await call(t.url, 'GET', '/v1/tenants?state=suspended', { token: t.adminToken })).body
      .tenants;
    assert.equal(list.length, h.suspended.tenants);

    // A suspended tenant asked to stop keeps its full booking from the request on.
    suspend('s-4');
    await agent.heartbeat();
    assert.deepEqual((await host()).suspended, { tenants: 2, vcpus: 2, memoryMiB: 2048 });
    const stop = await call(t.url, 'POST', '/v1/tenants/s-4/stop', { token: t.adminToken });
    assert.equal(stop.status, 202, stop.text);
    assert.deepEqual((await host()).suspended, { tenants: 1, vcpus: 1, memoryMiB: 1024 });
    agent.report.delete(ids.get('s-4')!);
    await converge([agent], async () => (await tenant('s-4')).state === 'stopped');
    assert.deepEqual((await host()).suspended, { tenants: 1, vcpus: 1, memoryMiB: 1024 });
  });

  test('exec, files, dashboard and sessions on a suspended tenant are relayed to its host, not refused', async () => {
    assert.equal((await tenant('s-2')).state, 'suspended');
    const key = keys.get('s-2')!;
    const vm = vmIdOfTenant(ids.get('s-2')!);
    const exec = await call(t.url, 'POST', '/v1/tenants/s-2/exec', { token: key, body: { argv: ['true'] } });
    assert.equal(exec.status, 200, exec.text);
    assert.match(exec.text, /"exit"/);
    assert.ok(agent.seen.some((s) => s.url === `/v1/vms/${vm}/exec`));
    const file = await call(t.url, 'GET', '/v1/tenants/s-2/files?path=/etc/hostname', { token: key });
    assert.equal(file.status, 200, file.text);
    assert.equal(file.text, 'file-bytes');

    // The host takes longer than WARREN_DASHBOARD_TIMEOUT_MS to answer while it wakes the VM:
    // a suspended tenant's request gets WARREN_WAKE_TIMEOUT_MS more.
    agent.answerDelayMs = 1000;
    try {
      const page = await fetch(`${t.url}/t/s-2/dashboard/`, { headers: { authorization: `Bearer ${key}` } });
      assert.equal(page.status, 200);
      assert.equal(await page.text(), 'dashboard page\n');
      // A running tenant gets no such slack: the same delay is past its timeout.
      agent.report.delete(ids.get('s-2')!);
      await agent.heartbeat();
      const slow = await fetch(`${t.url}/t/s-2/dashboard/`, { headers: { authorization: `Bearer ${key}` } });
      assert.equal(slow.status, 503);
      assert.match(await slow.text(), /did not answer within 300 ms/);
    } finally {
      agent.answerDelayMs = 0;
    }

    suspend('s-2');
    await agent.heartbeat();
    const session = await call(t.url, 'POST', '/v1/tenants/s-2/sessions', { token: key, body: {} });
    assert.equal(session.status, 201, session.text);
    const end = await call(t.url, 'POST', `/v1/tenants/s-2/sessions/${session.body.id}/end`, {
      token: key,
      body: {},
    });
    assert.ok(end.status < 300, end.text);

    // A stopped tenant is still refused.
    const stop = await call(t.url, 'POST', '/v1/tenants/s-3/stop', { token: t.adminToken });
    assert.equal(stop.status, 202);
    await agent.heartbeat();
    const refused = await call(t.url, 'POST', '/v1/tenants/s-3/exec', {
      token: t.adminToken,
      body: { argv: ['true'] },
    });
    assert.equal(refused.body.error.code, 'TENANT_NOT_RUNNING');
  });

  test('start of a suspended tenant is an ordinary start: a new generation, done once its host reports it running', async () => {
    suspend('s-2');
    await agent.heartbeat();
    assert.equal((await tenant('s-2')).state, 'suspended');
    const generation = agent.desired.find((d) => d.name === 's-2')!.generation;
    const started = await call(t.url, 'POST', '/v1/tenants/s-2/start', { token: keys.get('s-2')! });
    assert.equal(started.status, 202, started.text);
    await agent.heartbeat();
    assert.equal(agent.desired.find((d) => d.name === 's-2')!.generation, generation + 1);
    const op = async () =>
      (await call(t.url, 'GET', `/v1/operations/${started.body.operation.id}`, { token: t.adminToken })).body;
    // Still suspended at the new generation: not done yet.
    assert.equal((await op()).status, 'running');
    agent.report.delete(ids.get('s-2')!);
    await agent.heartbeat();
    assert.equal((await op()).status, 'succeeded');
    assert.equal((await tenant('s-2')).state, 'running');
  });
});

describe('failed starts and health transitions', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  let id = '';
  before(async () => {
    t = await openTestControlPlane();
    agent = await new FakeAgent('health-host', { vcpus: 8, memoryMiB: 8192, diskMiB: 100_000 }).start(
      t.url,
      t.joinToken,
    );
    const { created } = await createTenantWithKey(t, { name: 'h-1', ...SMALL });
    id = created.tenant.id;
    await convergeAllRunning(t, [agent]);
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
  });

  const tenant = async () => (await call(t.url, 'GET', '/v1/tenants/h-1', { token: t.adminToken })).body;

  test('attempts the host reports are shown, and when it gave up', async () => {
    const next = new Date(Date.now() + 60_000).toISOString();
    const error = { code: 'DISK_FULL', message: 'no space left on /var/lib/warren' };
    agent.report.set(id, { state: 'failed', error, attempts: { count: 3, nextAttemptAt: next } });
    await agent.heartbeat();
    let v = await tenant();
    assert.equal(v.state, 'failed');
    assert.deepEqual(v.lastError, error);
    assert.deepEqual(v.attempts, { count: 3, nextAttemptAt: next });
    agent.report.set(id, { state: 'failed', error, attempts: { count: 5, nextAttemptAt: null } });
    await agent.heartbeat();
    v = await tenant();
    assert.deepEqual(v.attempts, { count: 5, nextAttemptAt: null });
    // An older agent sends no attempts: none are shown.
    agent.report.set(id, { state: 'failed', error });
    await agent.heartbeat();
    assert.equal((await tenant()).attempts, null);
    agent.report.delete(id);
    await agent.heartbeat();
    v = await tenant();
    assert.equal(v.state, 'running');
    assert.equal(v.lastError, null);
  });

  test('each health transition is one audit entry with its reason; repeats add none', async () => {
    const unhealthy = { code: 'GUEST_UNHEALTHY', message: 'the guest agent did not answer 3 health checks' };
    const steps: [Parameters<typeof agent.report.set>[1] | undefined, number][] = [
      [{ state: 'unhealthy', error: unhealthy }, 3],
      [undefined, 2],
      [{ state: 'suspended' }, 3],
      [undefined, 1],
      [{ state: 'crashed', error: { code: 'VM_EXITED', message: 'qemu exited with 1' } }, 2],
      // Restarted through `starting`: still one way back, and `starting` itself is no event.
      [{ state: 'starting' }, 2],
      [undefined, 1],
      [{ state: 'starting' }, 1],
      [undefined, 1],
    ];
    for (const [report, beats] of steps) {
      if (report) agent.report.set(id, report);
      else agent.report.delete(id);
      for (let i = 0; i < beats; i++) await agent.heartbeat();
    }
    const events = (
      await call(t.url, 'GET', '/v1/audit?tenant=h-1&limit=1000', { token: t.adminToken })
    ).body.events.filter((e: { actor: string }) => e.actor === `host:${agent.hostId}`);
    // The first test's failed/running transitions come first (newest first here).
    const seen = events.map((e: { action: string; result: string }) => `${e.action}:${e.result}`).reverse();
    assert.deepEqual(seen, [
      'tenant.failed:DISK_FULL',
      'tenant.recovered:ok',
      'tenant.unhealthy:GUEST_UNHEALTHY',
      'tenant.recovered:ok',
      'tenant.suspended:ok',
      'tenant.woke:ok',
      'tenant.crashed:VM_EXITED',
      'tenant.recovered:ok',
    ]);
    const u = events.find((e: { action: string }) => e.action === 'tenant.unhealthy');
    assert.equal(u.target, `h-1: ${unhealthy.message}`);
    assert.equal(u.tenantId, id);
    assert.equal(u.status, 503);
  });
});

describe('quarantined VMs', () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  const orphan = 'ten-00000000000000aa';
  const quarantined = (vmId: string, tenantId: string) => ({
    vmId,
    tenantId,
    imageId: FAKE_IMAGE,
    vcpus: 2,
    memoryMiB: 2048,
    diskMiB: 3000,
    quarantinedAt: '2026-12-01T10:00:00.000Z',
    removeAfter: '2026-12-08T10:00:00.000Z',
  });
  before(async () => {
    t = await openTestControlPlane();
    agent = await new FakeAgent('q-host', { vcpus: 8, memoryMiB: 8192, diskMiB: 100_000 }).start(
      t.url,
      t.joinToken,
    );
  });
  after(async () => {
    await agent?.stop();
    await t?.close();
  });

  const host = async () =>
    (await call(t.url, 'GET', `/v1/hosts/${agent.name}`, { token: t.adminToken })).body;

  test('the host lists what its heartbeat quarantined; each heartbeat replaces the list', async () => {
    const { created } = await createTenantWithKey(t, { name: 'taken', ...SMALL });
    agent.quarantined = [
      quarantined(orphan, 'ten_00000000000000aa'),
      quarantined(vmIdOfTenant(created.tenant.id), created.tenant.id),
      quarantined('ten-00000000000000bb', 'ten_00000000000000bb'),
    ];
    await agent.heartbeat();
    let h = await host();
    assert.deepEqual(
      h.quarantined.map((q: { vmId: string }) => q.vmId),
      [orphan, 'ten-00000000000000bb', vmIdOfTenant(created.tenant.id)].sort(),
    );
    assert.deepEqual(h.quarantined[0], quarantined(orphan, 'ten_00000000000000aa'));
    const list = (await call(t.url, 'GET', '/v1/hosts', { token: t.adminToken })).body.hosts;
    assert.equal(list[0].quarantined.length, 3);
    agent.quarantined = agent.quarantined.filter((q) => q.vmId !== 'ten-00000000000000bb');
    await agent.heartbeat();
    h = await host();
    assert.equal(h.quarantined.length, 2);
  });

  test('adopt: a stopped tenant with the VM id, size and image, booked on that host; its host then lists it as desired', async () => {
    const before = await host();
    const clashName = await call(t.url, 'POST', `/v1/hosts/${agent.name}/quarantine/${orphan}/adopt`, {
      token: t.adminToken,
      body: { name: 'taken' },
    });
    assert.equal(clashName.status, 409, clashName.text);
    const taken = (await call(t.url, 'GET', '/v1/tenants/taken', { token: t.adminToken })).body;
    const clashId = await call(
      t.url,
      'POST',
      `/v1/hosts/${agent.name}/quarantine/${vmIdOfTenant(taken.id)}/adopt`,
      { token: t.adminToken, body: { name: 'other' } },
    );
    assert.equal(clashId.status, 409, clashId.text);
    assert.match(clashId.body.error.message, /already has id/);
    const unknown = await call(
      t.url,
      'POST',
      `/v1/hosts/${agent.name}/quarantine/ten-00000000000000cc/adopt`,
      {
        token: t.adminToken,
        body: { name: 'other' },
      },
    );
    assert.equal(unknown.status, 404);

    const adopted = await call(t.url, 'POST', `/v1/hosts/${agent.name}/quarantine/${orphan}/adopt`, {
      token: t.adminToken,
      body: { name: 'rescued' },
    });
    assert.equal(adopted.status, 201, adopted.text);
    assert.equal(adopted.body.id, 'ten_00000000000000aa');
    assert.equal(adopted.body.desiredState, 'stopped');
    assert.equal(adopted.body.hostId, agent.hostId);
    assert.equal(adopted.body.imageId, FAKE_IMAGE);
    assert.deepEqual([adopted.body.vcpus, adopted.body.memoryMiB, adopted.body.diskMiB], [2, 2048, 3000]);
    const after = await host();
    assert.deepEqual(after.allocated, {
      vcpus: before.allocated.vcpus + 2,
      memoryMiB: before.allocated.memoryMiB + 2048,
      diskMiB: before.allocated.diskMiB + 3000,
    });
    assert.ok(!after.quarantined.some((q: { vmId: string }) => q.vmId === orphan));
    // The host un-quarantines it once it is desired (the real agent does; the fake one drops it).
    agent.quarantined = agent.quarantined!.filter((q) => q.vmId !== orphan);
    await agent.heartbeat();
    const desired = agent.desired.find((d) => d.vmId === orphan);
    assert.equal(desired?.desiredState, 'stopped');
    await agent.heartbeat();
    const rescued = (await call(t.url, 'GET', '/v1/tenants/rescued', { token: t.adminToken })).body;
    assert.equal(rescued.state, 'stopped');
    const audit = (await call(t.url, 'GET', '/v1/audit?action=host.adopt', { token: t.adminToken })).body
      .events;
    assert.equal(audit[0].result, 'ok');
    assert.equal(audit[0].tenantId, 'ten_00000000000000aa');
  });
});

describe('host removal', () => {
  let t: TestControlPlane;
  let gone: FakeAgent;
  let spare: FakeAgent;
  before(async () => {
    t = await openTestControlPlane({
      backupPollMs: 20,
      backupScheduleMs: 0,
      backupGcIntervalMs: 0,
      backupDrillIntervalMs: 0,
      heartbeatTimeoutMs: 1000,
    });
    gone = (
      await new FakeAgent('gone-host', { vcpus: 8, memoryMiB: 8192, diskMiB: 100_000 }).start(
        t.url,
        t.joinToken,
      )
    ).useObjectStore(join(t.dataDir, 'objects'));
  });
  after(async () => {
    await gone?.stop();
    await spare?.stop();
    await t?.close();
  });

  test('refused while the host heartbeats; forced or once silent, its tenants are lost; they restore onto another host or delete at once', async () => {
    await createTenantWithKey(t, { name: 'keep', ...SMALL });
    const { key } = await createTenantWithKey(t, { name: 'drop', ...SMALL });
    await convergeAllRunning(t, [gone]);
    gone.volumes.set(vmIdOfTenant((await tenantOf('keep')).id), { data: Buffer.from('precious data\n') });
    const backup = await call(t.url, 'POST', '/v1/tenants/keep/backups', { token: t.adminToken, body: {} });
    assert.equal(backup.status, 202, backup.text);
    await until('the backup completes', async () => {
      const b = await call(t.url, 'GET', `/v1/tenants/keep/backups/${backup.body.id}`, {
        token: t.adminToken,
      });
      return b.body.state === 'complete';
    });

    const refused = await call(t.url, 'DELETE', `/v1/hosts/${gone.name}`, { token: t.adminToken });
    assert.equal(refused.status, 409, refused.text);
    assert.match(refused.body.error.message, /--force/);

    const removed = await call(t.url, 'DELETE', `/v1/hosts/${gone.name}?force=true`, { token: t.adminToken });
    assert.equal(removed.status, 200, removed.text);
    assert.deepEqual(removed.body, { host: 'gone-host', lostTenants: ['drop', 'keep'] });
    const keep = await tenantOf('keep');
    assert.equal(keep.state, 'lost');
    assert.equal(keep.hostId, null);
    assert.equal(keep.lastError.code, 'HOST_LOST');
    assert.equal((await call(t.url, 'GET', `/v1/hosts/${gone.name}`, { token: t.adminToken })).status, 404);
    // Its agent's token went with it.
    await assert.rejects(gone.heartbeat(), /heartbeat failed/);
    const exec = await call(t.url, 'POST', '/v1/tenants/drop/exec', {
      token: key.token,
      body: { argv: ['true'] },
    });
    assert.equal(exec.status, 410, exec.text);
    assert.equal(exec.body.error.code, 'HOST_LOST');
    const start = await call(t.url, 'POST', '/v1/tenants/drop/start', { token: key.token });
    assert.equal(start.body.error.code, 'HOST_LOST');
    const audit = (await call(t.url, 'GET', '/v1/audit?action=host.remove', { token: t.adminToken })).body
      .events;
    assert.deepEqual(
      audit.map((e: { result: string }) => e.result),
      ['ok', 'CONFLICT'],
    );
    const trail = (await call(t.url, 'GET', '/v1/audit?tenant=keep', { token: t.adminToken })).body.events;
    assert.equal(trail[0].action, 'tenant.lost');
    assert.equal(trail[0].result, 'HOST_LOST');

    // A lost tenant has no VM to back up: its schedule makes no backups (its backups stay).
    const policy = await call(t.url, 'PUT', '/v1/tenants/keep/backup-policy', {
      token: t.adminToken,
      body: { everyMinutes: 60 },
    });
    assert.equal(policy.status, 200, policy.text);
    const tick = await t.cp.backups.schedule.tick(Date.now() + 2 * 3600_000);
    assert.deepEqual(tick.started, []);
    assert.deepEqual(tick.pruned, []);

    // A lost tenant restores from its latest backup onto another host, under its own id.
    spare = (
      await new FakeAgent('spare-host', { vcpus: 8, memoryMiB: 8192, diskMiB: 100_000 }).start(
        t.url,
        t.joinToken,
        50,
      )
    ).useObjectStore(join(t.dataDir, 'objects'));
    const restore = await call(t.url, 'POST', `/v1/tenants/keep/backups/${backup.body.id}/restore`, {
      token: t.adminToken,
      body: {},
    });
    assert.equal(restore.status, 202, restore.text);
    assert.equal(restore.body.tenant.id, keep.id);
    assert.equal(restore.body.tenant.hostId, spare.hostId);
    await until('the restore ends', async () => {
      const o = await call(t.url, 'GET', `/v1/operations/${restore.body.operation.id}`, {
        token: t.adminToken,
      });
      return o.body.status !== 'running';
    });
    const op = await call(t.url, 'GET', `/v1/operations/${restore.body.operation.id}`, {
      token: t.adminToken,
    });
    assert.equal(op.body.status, 'succeeded', op.text);
    assert.equal(spare.volumeOf(vmIdOfTenant(keep.id)).data.toString(), 'precious data\n');
    await until('it runs on the spare host', async () => (await tenantOf('keep')).state === 'running');
    assert.equal((await tenantOf('keep')).lastError, null);
    assert.equal(
      (await call(t.url, 'GET', `/v1/hosts/${spare.name}`, { token: t.adminToken })).body.allocated.memoryMiB,
      1024,
    );

    // A lost tenant's delete needs no host to confirm it.
    const del = await call(t.url, 'DELETE', '/v1/tenants/drop', { token: t.adminToken });
    assert.equal(del.status, 202, del.text);
    assert.equal(del.body.operation.status, 'succeeded');
    assert.equal((await call(t.url, 'GET', '/v1/tenants/drop', { token: t.adminToken })).status, 404);
  });

  async function tenantOf(name: string) {
    return (await call(t.url, 'GET', `/v1/tenants/${name}`, { token: t.adminToken })).body;
  }
});
