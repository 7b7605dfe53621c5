/**
 * `GET /v1/events` against a real control plane (SQLite in a temp dir) and a fake host agent:
 * a tenant's state change appears as it happens; a tenant key sees only its own tenant;
 * Last-Event-ID replays what was missed (and says when it cannot); a client that stops reading
 * is dropped once its queue is full, so it cannot make the control plane hold more.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { EventOf, PlatformEvent } from '@warren/protocol';
import {
  call,
  converge,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { REPO_ROOT } from '../helpers/image.ts';
import { type EventStream, openEvents } from '../helpers/sse.ts';
import { until } from '../helpers/until.ts';

let t: TestControlPlane;
let agent: FakeAgent;
const streams: EventStream[] = [];
const QUEUE = 20;

async function open(token: string, opts: { query?: string; lastEventId?: string } = {}) {
  const s = await openEvents(t.url, token, opts);
  streams.push(s);
  return s;
}

const tenantUpdate = (name: string, state?: string) => (e: PlatformEvent) =>
  e.type === 'tenant.updated' && e.data.tenant.name === name && (!state || e.data.tenant.state === state);

before(async () => {
  t = await openTestControlPlane({ eventsClientQueue: QUEUE, eventsBuffer: 50, eventsKeepaliveMs: 200 });
  agent = (
    await new FakeAgent('host-ev', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 }).start(
      t.url,
      t.joinToken,
    )
  ).useObjectStore(join(t.dataDir, 'objects'));
});

after(async () => {
  for (const s of streams) s.close();
  await agent?.stop();
  await t?.close();
});

describe('the event stream', () => {
  test('a tenant created, converged and stopped: each change is an event, live, with its operation', async () => {
    const admin = await open(t.adminToken);
    assert.equal(admin.status, 200);
    const { created } = await createTenantWithKey(t, { name: 'ev-a' });
    const first = (await admin.next('ev-a created', tenantUpdate('ev-a'))) as EventOf<'tenant.updated'>;
    assert.equal(first.data.previousState, null);
    assert.equal(first.tenantId, created.tenant.id);
    await admin.next(
      'its create operation',
      (e) => e.type === 'operation.updated' && e.data.operation.id === created.operation.id,
    );
    await admin.next(
      'the audit entry',
      (e) => e.type === 'audit.recorded' && e.data.event.action === 'tenant.create',
    );
    await converge(
      [agent],
      async () =>
        (await call(t.url, 'GET', '/v1/tenants/ev-a', { token: t.adminToken })).body.state === 'running',
    );
    const running = (await admin.next(
      'ev-a running',
      tenantUpdate('ev-a', 'running'),
    )) as EventOf<'tenant.updated'>;
    assert.notEqual(running.data.previousState, 'running');
    await admin.next(
      'the create operation succeeded',
      (e) =>
        e.type === 'operation.updated' &&
        e.data.operation.id === created.operation.id &&
        e.data.operation.status === 'succeeded',
    );
    const stop = await call(t.url, 'POST', '/v1/tenants/ev-a/stop', { token: t.adminToken });
    assert.equal(stop.status, 202);
    await converge(
      [agent],
      async () =>
        (await call(t.url, 'GET', '/v1/tenants/ev-a', { token: t.adminToken })).body.state === 'stopped',
    );
    const stopped = (await admin.next(
      'ev-a stopped',
      tenantUpdate('ev-a', 'stopped'),
    )) as EventOf<'tenant.updated'>;
    // The fake agent goes from running to stopped in one heartbeat (a real one reports stopping).
    assert.equal(stopped.data.previousState, 'running');
    // Every id is unique and grows: the order clients can resume from.
    const seqs = admin.events.map((e) => Number(e.id.split('-')[1]));
    assert.deepEqual(
      seqs,
      [...seqs].sort((a, b) => a - b),
    );
    assert.equal(new Set(seqs).size, seqs.length);
    // Keepalive comments flow while nothing happens.
    await until('a keepalive', () => admin.comments.includes('keepalive'), 5_000);
  });

  test("a tenant key sees its own tenant's events only: never another's, never hosts'", async () => {
    const a = await createTenantWithKey(t, { name: 'scope-a' });
    const b = await createTenantWithKey(t, { name: 'scope-b' });
    const sa = await open(a.key.token);
    const sb = await open(b.key.token);
    assert.equal(sa.status, 200);
    // Another tenant named in the filter is the same 404 as a tenant that does not exist.
    const probe = await openEvents(t.url, a.key.token, { query: 'tenant=scope-b' });
    assert.equal(probe.status, 404);
    const admin = await open(t.adminToken, { query: 'tenant=scope-b' });
    await call(t.url, 'POST', '/v1/tenants/scope-a/stop', { token: a.key.token });
    await call(t.url, 'POST', '/v1/tenants/scope-b/stop', { token: b.key.token });
    await converge([agent], async () => {
      const r = await call(t.url, 'GET', '/v1/tenants', { token: t.adminToken });
      return r.body.tenants
        .filter((x: { name: string }) => x.name.startsWith('scope-'))
        .every((x: { state: string }) => x.state === 'stopped');
    });
    // A host event happens too (drain), which no tenant may see.
    assert.equal(
      (
        await call(t.url, 'POST', `/v1/hosts/${agent.name}/drain`, {
          token: t.adminToken,
          body: { draining: true },
        })
      ).status,
      200,
    );
    await call(t.url, 'POST', `/v1/hosts/${agent.name}/drain`, {
      token: t.adminToken,
      body: { draining: false },
    });
    await sa.next('scope-a stopped', tenantUpdate('scope-a', 'stopped'));
    await sb.next('scope-b stopped', tenantUpdate('scope-b', 'stopped'));
    await admin.next('scope-b stopped (admin, filtered)', tenantUpdate('scope-b', 'stopped'));
    const everything = await open(t.adminToken, { lastEventId: sa.events[0]!.id });
    await everything.next('the drain (admin)', (e) => e.type === 'host.updated' && e.data.host.draining);
    for (const [s, own] of [
      [sa, a.created.tenant.id],
      [sb, b.created.tenant.id],
    ] as const) {
      assert.ok(s.events.length > 0);
      for (const e of s.events) assert.equal(e.tenantId, own, JSON.stringify(e).slice(0, 300));
    }
    for (const e of admin.events) assert.equal(e.tenantId, b.created.tenant.id);
  });

  test('Last-Event-ID replays what a client missed; an unknown or too old id gets stream.reset first', async () => {
    const live = await open(t.adminToken, { query: 'types=tenant' });
    await createTenantWithKey(t, { name: 'replay-1' });
    const mark = await live.next('replay-1', tenantUpdate('replay-1'));
    await createTenantWithKey(t, { name: 'replay-2' });
    await live.next('replay-2', tenantUpdate('replay-2'));
    const resumed = await open(t.adminToken, { lastEventId: mark.id, query: 'types=tenant' });
    const got = await resumed.next('replay-2, replayed', tenantUpdate('replay-2'));
    assert.ok(!resumed.events.some((e) => e.id === mark.id), 'the event named is not sent again');
    assert.equal(resumed.events[0]!.type, 'tenant.updated');
    assert.ok(Number(got.id.split('-')[1]) > Number(mark.id.split('-')[1]));
    for (const e of resumed.events) assert.ok(e.type.startsWith('tenant.'), e.type);

    const foreign = await open(t.adminToken, { lastEventId: 'deadbeef-3' });
    const reset = await foreign.next('stream.reset', (e) => e.type === 'stream.reset');
    assert.deepEqual(reset.data, { reason: 'unknown-id' });
    // The buffer holds 50: push the mark out of it (each key made is an audit event).
    for (let i = 0; i < 60; i++) {
      await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: 'replay-1' } });
    }
    await t.cp.events.settled();
    const old = await open(t.adminToken, { lastEventId: mark.id });
    const tooOld = await old.next('stream.reset', (e) => e.type === 'stream.reset');
    assert.deepEqual(tooOld.data, { reason: 'too-old' });
  });

  test('a client that stops reading is dropped when its queue is full; others keep getting everything', async () => {
    const fast = await open(t.adminToken, { query: 'types=audit' });
    const before = t.cp.hub.subscriberCount;
    // A raw client that sends its request and then never reads: the socket fills, then its queue.
    const slow = connect(new URL(t.url).port ? Number(new URL(t.url).port) : 80, '127.0.0.1');
    slow.pause();
    await new Promise<void>((r) => slow.once('connect', () => r()));
    slow.write(`GET /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${t.adminToken}\r\n\r\n`);
    await until('the slow client subscribed', () => t.cp.hub.subscriberCount === before + 1, 5_000);
    const dropped = t.cp.hub.droppedTotal;
    // Big events, so a few fill the socket's buffers: 200 of 256 KiB is 50 MiB the hub never holds.
    const big = 'x'.repeat(256 * 1024);
    let published = 0;
    for (; published < 200 && t.cp.hub.droppedTotal === dropped; published++) {
      t.cp.hub.publish({
        type: 'audit.recorded',
        tenantId: null,
        data: {
          event: {
            id: 1_000_000 + published,
            at: new Date().toISOString(),
            actor: 'admin',
            action: 'test.big',
            target: big,
            tenantId: null,
            result: 'ok',
            status: 200,
            requestId: `req_${published}`,
          },
        },
      });
      // Let the sockets move what they can, as real producers would between events.
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(t.cp.hub.droppedTotal, dropped + 1, `not dropped after ${published} events`);
    process.stdout.write(
      `# the slow client was dropped after ${published} events of 256 KiB (queue limit ${QUEUE}; the rest sat in socket buffers)\n`,
    );
    assert.ok(published < 200, `dropped only after ${published} events`);
    assert.equal(t.cp.hub.subscriberCount, before);
    // The server closed it: reading now reaches the end.
    slow.resume();
    await new Promise<void>((r) => {
      if (slow.destroyed) r();
      slow.once('close', () => r());
    });
    // The reading client got every one of them.
    await until(
      'the fast client has all',
      () =>
        fast.events.filter((e) => e.type === 'audit.recorded' && e.data.event.action === 'test.big')
          .length === published,
      30_000,
    );
    const metrics = await fetch(`${t.url}/metrics`, { headers: { authorization: `Bearer ${t.adminToken}` } });
    assert.match(await metrics.text(), /^warren_event_subscribers_dropped_total [1-9]/m);
  });

  test('warren events lists what the control plane holds; --follow --tenant prints changes as they happen', async () => {
    const env = {
      ...process.env,
      WARREN_API_URL: t.url,
      WARREN_TOKEN: t.adminToken,
      WARREN_DATA_DIR: '/nonexistent',
    };
    const warren = join(REPO_ROOT, 'node_modules', '.bin', 'warren');
    await createTenantWithKey(t, { name: 'listed-1' });
    await t.cp.events.settled();
    const listed = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const c = spawn(warren, ['events', '--json', '--types', 'tenant'], { env });
      let out = '';
      let err = '';
      c.stdout.on('data', (b) => (out += b));
      c.stderr.on('data', (b) => (err += b));
      c.once('close', (code) => resolve({ code, out, err }));
    });
    assert.equal(listed.code, 0, listed.err);
    const lines = listed.out
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as PlatformEvent);
    assert.ok(lines.every((e) => e.type.startsWith('tenant.')));
    assert.ok(
      lines.some((e) => e.type === 'tenant.updated' && e.data.tenant.name === 'listed-1'),
      listed.out,
    );

    await createTenantWithKey(t, { name: 'follow-me' });
    const follow = spawn(warren, ['events', '--follow', '--tenant', 'follow-me'], { env });
    let out = '';
    follow.stdout.on('data', (b) => (out += b));
    follow.stderr.on('data', (b) => (out += b));
    const closed = new Promise((r) => follow.once('close', r));
    try {
      await until(
        'the follower is subscribed',
        () => t.cp.hub.subscriberCount > 0 && out.includes('follow-me'),
        20_000,
      );
      await converge(
        [agent],
        async () =>
          (await call(t.url, 'GET', '/v1/tenants/follow-me', { token: t.adminToken })).body.state ===
          'running',
      );
      await until(
        'the change is printed',
        () => / tenant\.updated +follow-me \S+ -> running/.test(out),
        10_000,
      );
    } finally {
      follow.kill('SIGINT');
      await closed;
    }
    assert.doesNotMatch(out, /replay-2|scope-a/, 'only the tenant asked for');
  });

  test("a restore's operation reports its progress and its end as events", async () => {
    await createTenantWithKey(t, { name: 'restored' });
    await converge(
      [agent],
      async () =>
        (await call(t.url, 'GET', '/v1/tenants/restored', { token: t.adminToken })).body.state === 'running',
    );
    const backup = await call(t.url, 'POST', '/v1/tenants/restored/backups', {
      token: t.adminToken,
      body: {},
    });
    assert.equal(backup.status, 202, backup.text);
    await until('the backup completes', async () => {
      const b = await call(t.url, 'GET', `/v1/tenants/restored/backups/${backup.body.id}`, {
        token: t.adminToken,
      });
      return b.body.state === 'complete';
    });
    const s = await open(t.adminToken, { query: 'tenant=restored&types=operation' });
    const restore = await call(t.url, 'POST', `/v1/tenants/restored/backups/${backup.body.id}/restore`, {
      token: t.adminToken,
      body: {},
    });
    assert.equal(restore.status, 202, restore.text);
    const done = (await s.next(
      'the restore ends',
      (e) =>
        e.type === 'operation.updated' &&
        e.data.operation.kind === 'restore' &&
        e.data.operation.status !== 'running',
      30_000,
    )) as EventOf<'operation.updated'>;
    assert.equal(done.data.operation.status, 'succeeded', JSON.stringify(done.data.operation.error));
    assert.equal(done.data.operation.id, restore.body.operation.id);
    assert.ok(done.data.operation.progress, 'the final event carries the progress');
  });
});
