/**
 * Placement against limited capacity: concurrent creates never double-book a host, and what
 * does not fit is refused with NO_CAPACITY (Warren does not queue; see docs/architecture.md).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { rank } from '@warren/control-plane';
import {
  call,
  converge,
  FAKE_IMAGE,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';

describe('scheduler policy', () => {
  const host = (id: string, vcpus: number, used: number) => ({
    id,
    capacity: { vcpus, memoryMiB: 8192, diskMiB: 100_000 },
    allocated: { vcpus: used, memoryMiB: used * 1024, diskMiB: 0 },
  });
  const r = { vcpus: 1, memoryMiB: 1024, diskMiB: 1000 };

  test('spreads: the least loaded host that fits comes first', () => {
    assert.deepEqual(
      rank([host('h1', 4, 3), host('h2', 4, 1), host('h3', 4, 2)], r).map((h) => h.id),
      ['h2', 'h3', 'h1'],
    );
  });

  test('hosts without room are filtered out, ties go to the lower id', () => {
    assert.deepEqual(
      rank([host('h2', 4, 0), host('h1', 4, 0), host('h0', 4, 4)], r).map((h) => h.id),
      ['h1', 'h2'],
    );
    assert.deepEqual(rank([host('h0', 4, 4)], r), []);
  });
});

describe('placement under concurrency', () => {
  let t: TestControlPlane;
  const agents: FakeAgent[] = [];
  before(async () => {
    t = await openTestControlPlane();
    for (let i = 0; i < 3; i++) {
      agents.push(
        await new FakeAgent(`host-${i}`, { vcpus: 4, memoryMiB: 4096, diskMiB: 40_000 }).start(
          t.url,
          t.joinToken,
        ),
      );
    }
  });
  after(async () => {
    for (const a of agents) await a.stop();
    await t?.close();
  });

  test('20 concurrent creates on room for 12: 12 placed, 8 NO_CAPACITY, no host over capacity', async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        call(t.url, 'POST', '/v1/tenants', {
          token: t.adminToken,
          body: { name: `t-${i}`, image: FAKE_IMAGE, vcpus: 1, memoryMiB: 1024, diskMiB: 1000 },
        }),
      ),
    );
    const placed = results.filter((r) => r.status === 202);
    const refused = results.filter((r) => r.status !== 202);
    assert.equal(placed.length, 12);
    assert.equal(refused.length, 8);
    for (const r of refused) {
      assert.equal(r.status, 409);
      assert.equal(r.body.error.code, 'NO_CAPACITY');
      assert.match(r.body.error.message, /cannot place 1 vCPU, 1024 MiB memory, 1000 MiB disk/);
    }
    const hosts = (await call(t.url, 'GET', '/v1/hosts', { token: t.adminToken })).body.hosts;
    const tenants = (await call(t.url, 'GET', '/v1/tenants', { token: t.adminToken })).body.tenants;
    for (const h of hosts) {
      const mine = tenants.filter((x: { hostId: string }) => x.hostId === h.id);
      const sum = mine.reduce((s: number, x: { vcpus: number }) => s + x.vcpus, 0);
      assert.equal(h.allocated.vcpus, sum, `${h.name}: allocation matches its tenants`);
      assert.ok(sum <= h.capacity.vcpus, `${h.name} double-booked: ${sum} > ${h.capacity.vcpus}`);
      assert.equal(mine.length, 4, 'spread evenly');
    }
  });

  test('deleting tenants gives their capacity back, draining keeps new tenants off a host', async () => {
    const doomed = [
      't-0',
      't-1',
      't-2',
      't-3',
      't-4',
      't-5',
      't-6',
      't-7',
      't-8',
      't-9',
      't-10',
      't-11',
      't-12',
    ];
    for (const name of doomed) await call(t.url, 'DELETE', `/v1/tenants/${name}`, { token: t.adminToken });
    await converge(agents, async () => {
      const hosts = (await call(t.url, 'GET', '/v1/hosts', { token: t.adminToken })).body.hosts;
      return hosts.every((h: { allocated: { vcpus: number } }) => h.allocated.vcpus <= 1);
    });
    const drained = await call(t.url, 'POST', '/v1/hosts/host-0/drain', { token: t.adminToken, body: {} });
    assert.equal(drained.body.draining, true);
    for (let i = 0; i < 6; i++) {
      const r = await call(t.url, 'POST', '/v1/tenants', {
        token: t.adminToken,
        body: { name: `d-${i}`, image: FAKE_IMAGE, vcpus: 1, memoryMiB: 512, diskMiB: 100 },
      });
      assert.equal(r.status, 202, r.text);
      assert.notEqual(r.body.tenant.hostId, agents[0]!.hostId, 'placed on a draining host');
    }
  });

  test('quotas and platform maximums name the limit', async () => {
    const over = await call(t.url, 'POST', '/v1/tenants', {
      token: t.adminToken,
      body: { name: 'big', image: FAKE_IMAGE, vcpus: 5 },
    });
    assert.equal(over.status, 422);
    assert.equal(over.body.error.code, 'QUOTA_EXCEEDED');
    assert.match(over.body.error.message, /vcpus 5 exceeds the tenant's quota of 4/);
    const platform = await call(t.url, 'POST', '/v1/tenants', {
      token: t.adminToken,
      body: { name: 'big', image: FAKE_IMAGE, quota: { memoryMiB: 1_000_000 } },
    });
    assert.equal(platform.status, 422);
    assert.match(
      platform.body.error.message,
      /quota.memoryMiB 1000000 exceeds the platform maximum of 65536 \(WARREN_MAX_MEMORY_MIB\)/,
    );
  });

  test('a host that stops heartbeating is reported unhealthy and gets no tenants; its tenants stay', async () => {
    const short = await openTestControlPlane({ heartbeatTimeoutMs: 1000 });
    const a = await new FakeAgent('lonely', { vcpus: 2, memoryMiB: 4096, diskMiB: 10_000 }).start(
      short.url,
      short.joinToken,
    );
    try {
      const r = await call(short.url, 'POST', '/v1/tenants', {
        token: short.adminToken,
        body: { name: 'stays', image: FAKE_IMAGE, memoryMiB: 512, diskMiB: 100 },
      });
      assert.equal(r.status, 202, r.text);
      await new Promise((res) => setTimeout(res, 1200));
      const hosts = (await call(short.url, 'GET', '/v1/hosts', { token: short.adminToken })).body.hosts;
      assert.equal(hosts[0].health, 'unhealthy');
      const tenant = (await call(short.url, 'GET', '/v1/tenants/stays', { token: short.adminToken })).body;
      assert.equal(tenant.hostId, a.hostId, 'not silently moved');
      assert.equal(tenant.hostHealthy, false);
      const again = await call(short.url, 'POST', '/v1/tenants', {
        token: short.adminToken,
        body: { name: 'nowhere', image: FAKE_IMAGE, memoryMiB: 512, diskMiB: 100 },
      });
      assert.equal(again.status, 404, again.text);
      assert.equal(again.body.error.code, 'IMAGE_NOT_FOUND');
    } finally {
      await a.stop();
      await short.close();
    }
  });
});
