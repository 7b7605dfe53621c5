/**
 * Snapshots and safe-YOLO sessions through the control plane's API, against a fake host agent
 * that keeps snapshots and credentials in memory (test/helpers/api.ts): the routes, their
 * scope and audit, the disk quota rule, one session per tenant, ending with keep or revert,
 * the expiry sweep (driven through its clock, no sleeps), one lifecycle step per tenant at a
 * time, and credentials that reach the agent and nothing else: not the database files, not
 * the audit log, not the control plane's log.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { vmIdOfTenant } from '@warren/protocol';
import {
  call,
  converge,
  convergeAllRunning,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { until } from '../helpers/until.ts';

const MIB = 1024 * 1024;
/** What the secret-scanning test looks for; long and unlike anything else in the files. */
const SECRET = 'wrn-test-credential-9c41d7e2b8f05a36';
const ENV_SECRET = 'wrn-test-env-credential-0d5e3f7a1b2c4d6e';

let t: TestControlPlane;
let agent: FakeAgent;
const logs: string[] = [];
const keys: Record<string, string> = {};
const ids: Record<string, string> = {};

async function tenant(name: string, extra: Record<string, unknown> = {}): Promise<void> {
  const { created, key } = await createTenantWithKey(t, { name, ...extra });
  keys[name] = key.token;
  ids[name] = created.tenant.id;
}

const as = (name: string) => ({ token: keys[name]! });

before(async () => {
  t = await openTestControlPlane({}, undefined, { log: (m) => logs.push(m) });
  agent = await new FakeAgent('snap-host', { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 }).start(
    t.url,
    t.joinToken,
  );
  await tenant('alpha');
  await tenant('beta');
  // Allowance: data volume 1024 + memory 512 + 100 MiB, so two 64 MiB snapshots fit, not three.
  await tenant('small', { diskMiB: 1024, memoryMiB: 512, quota: { diskMiB: 1024 + 512 + 100 } });
  await convergeAllRunning(t, [agent]);
});

after(async () => {
  await agent?.stop();
  await t?.close();
});

async function auditOf(tenantName: string): Promise<{ action: string; target: string; result: string }[]> {
  const r = await call(t.url, 'GET', `/v1/audit?tenant=${ids[tenantName]}&limit=1000`, {
    token: t.adminToken,
  });
  assert.equal(r.status, 200, r.text);
  return r.body.events;
}

describe('snapshots', () => {
  test('create (named and unnamed), list, revert, delete; each audited as tenant:name', async () => {
    const named = await call(t.url, 'POST', '/v1/tenants/alpha/snapshots', {
      ...as('alpha'),
      body: { name: 'before-upgrade' },
    });
    assert.equal(named.status, 201, named.text);
    assert.equal(named.body.snapshot.name, 'before-upgrade');
    assert.equal(named.body.reused, false);
    const again = await call(t.url, 'POST', '/v1/tenants/alpha/snapshots', {
      ...as('alpha'),
      body: { name: 'before-upgrade' },
    });
    assert.equal(again.status, 409, again.text);
    assert.equal(again.body.error.code, 'CONFLICT');
    const unnamed = await call(t.url, 'POST', '/v1/tenants/alpha/snapshots', { ...as('alpha'), body: {} });
    assert.equal(unnamed.status, 201, unnamed.text);
    const auto = unnamed.body.snapshot.name;

    const list = await call(t.url, 'GET', '/v1/tenants/alpha/snapshots', as('alpha'));
    assert.equal(list.status, 200, list.text);
    assert.deepEqual(
      list.body.snapshots.map((s: { name: string }) => s.name).sort(),
      [auto, 'before-upgrade'].sort(),
    );

    const revert = await call(
      t.url,
      'POST',
      '/v1/tenants/alpha/snapshots/before-upgrade/revert',
      as('alpha'),
    );
    assert.equal(revert.status, 200, revert.text);
    assert.equal(revert.body.snapshot.name, 'before-upgrade');
    assert.equal(typeof revert.body.revertMs, 'number');
    assert.deepEqual(agent.reverts.at(-1), { vmId: vmIdOfTenant(ids.alpha!), name: 'before-upgrade' });

    const missing = await call(t.url, 'POST', '/v1/tenants/alpha/snapshots/nope/revert', as('alpha'));
    assert.equal(missing.status, 404, missing.text);
    assert.equal(missing.body.error.code, 'NOT_FOUND');
    const bad = await call(t.url, 'POST', '/v1/tenants/alpha/snapshots/Not_A_Name/revert', as('alpha'));
    assert.equal(bad.status, 400, bad.text);

    for (const name of ['before-upgrade', auto]) {
      const del = await call(t.url, 'DELETE', `/v1/tenants/alpha/snapshots/${name}`, as('alpha'));
      assert.equal(del.status, 204, del.text);
    }
    const empty = await call(t.url, 'GET', '/v1/tenants/alpha/snapshots', as('alpha'));
    assert.deepEqual(empty.body.snapshots, []);

    const events = await auditOf('alpha');
    const mine = events.filter((e) => e.action.startsWith('tenant.snapshot.'));
    assert.ok(
      mine.some(
        (e) =>
          e.action === 'tenant.snapshot.create' && e.target === 'alpha:before-upgrade' && e.result === 'ok',
      ),
    );
    assert.ok(mine.some((e) => e.action === 'tenant.snapshot.create' && e.target === `alpha:${auto}`));
    assert.ok(mine.some((e) => e.action === 'tenant.snapshot.create' && e.result === 'CONFLICT'));
    assert.ok(
      mine.some(
        (e) =>
          e.action === 'tenant.snapshot.revert' && e.target === 'alpha:before-upgrade' && e.result === 'ok',
      ),
    );
    assert.ok(
      mine.some(
        (e) => e.action === 'tenant.snapshot.revert' && e.target === 'alpha:nope' && e.result === 'NOT_FOUND',
      ),
    );
    assert.ok(mine.some((e) => e.action === 'tenant.snapshot.delete' && e.target === `alpha:${auto}`));
  });

  test("another tenant's key gets 404 on every snapshot route, and nothing reaches the agent", async () => {
    await call(t.url, 'POST', '/v1/tenants/alpha/snapshots', { ...as('alpha'), body: { name: 'mine' } });
    const before = agent.seen.length;
    for (const [method, path] of [
      ['POST', '/v1/tenants/alpha/snapshots'],
      ['GET', '/v1/tenants/alpha/snapshots'],
      ['POST', '/v1/tenants/alpha/snapshots/mine/revert'],
      ['DELETE', '/v1/tenants/alpha/snapshots/mine'],
      ['POST', '/v1/tenants/alpha/sessions'],
      ['GET', '/v1/tenants/alpha/sessions'],
    ] as const) {
      const r = await call(t.url, method, path, { ...as('beta'), body: {} });
      assert.equal(r.status, 404, `${method} ${path}: ${r.text}`);
      assert.equal(r.body.error.code, 'NOT_FOUND');
    }
    assert.equal(agent.seen.length, before);
    assert.equal((await call(t.url, 'DELETE', '/v1/tenants/alpha/snapshots/mine', as('alpha'))).status, 204);
  });

  test('a create that would take data volume + snapshots + the new one over the disk quota is QUOTA_EXCEEDED', async () => {
    assert.equal(agent.snapshotBytes, 64 * MIB);
    for (const name of ['one', 'two']) {
      const r = await call(t.url, 'POST', '/v1/tenants/small/snapshots', { ...as('small'), body: { name } });
      assert.equal(r.status, 201, r.text);
    }
    const over = await call(t.url, 'POST', '/v1/tenants/small/snapshots', {
      ...as('small'),
      body: { name: 'three' },
    });
    assert.equal(over.status, 422, over.text);
    assert.equal(over.body.error.code, 'QUOTA_EXCEEDED');
    assert.match(over.body.error.message, /disk quota of 1636 MiB \(quota\.diskMiB\)/);
    assert.equal(over.body.error.details.limit, 'quota.diskMiB');
    // Replacing a snapshot does not count the one it replaces.
    await call(t.url, 'POST', '/v1/tenants/small/exec', { ...as('small'), body: { argv: ['true'] } });
    const replace = await call(t.url, 'POST', '/v1/tenants/small/snapshots', {
      ...as('small'),
      body: { name: 'two', reuse: true },
    });
    assert.equal(replace.status, 201, replace.text);
    // Deleting one frees its room.
    assert.equal((await call(t.url, 'DELETE', '/v1/tenants/small/snapshots/one', as('small'))).status, 204);
    const fits = await call(t.url, 'POST', '/v1/tenants/small/snapshots', {
      ...as('small'),
      body: { name: 'three' },
    });
    assert.equal(fits.status, 201, fits.text);
    for (const name of ['two', 'three'])
      await call(t.url, 'DELETE', `/v1/tenants/small/snapshots/${name}`, as('small'));
  });
});

describe('sessions', () => {
  test('start with credentials, one per tenant, changes, end with revert; credentials reach the guest and leave it', async () => {
    const vm = vmIdOfTenant(ids.alpha!);
    const started = await call(t.url, 'POST', '/v1/tenants/alpha/sessions', {
      ...as('alpha'),
      body: { files: { 'token.txt': SECRET }, env: { API_TOKEN: ENV_SECRET } },
    });
    assert.equal(started.status, 201, started.text);
    const s = started.body;
    assert.match(s.id, /^ses_[0-9a-f]{16}$/);
    assert.equal(s.state, 'active');
    assert.equal(s.snapshot, 'session-base');
    assert.equal(s.outcome, null);
    // The platform maximum (WARREN_SESSION_MAX_MS, 1 h by default) when the request names none.
    assert.equal(Date.parse(s.expiresAt) - Date.parse(s.createdAt), 3600_000);
    assert.deepEqual(agent.credentials.get(vm), {
      files: { 'token.txt': SECRET },
      env: { API_TOKEN: ENV_SECRET },
    });
    assert.ok(agent.snapshots.get(vm)?.has('session-base'));

    const second = await call(t.url, 'POST', '/v1/tenants/alpha/sessions', { ...as('alpha'), body: {} });
    assert.equal(second.status, 409, second.text);
    assert.equal(second.body.error.code, 'CONFLICT');
    assert.ok(second.body.error.message.includes(s.id));

    // The session's clean snapshot cannot be deleted from under it.
    const del = await call(t.url, 'DELETE', '/v1/tenants/alpha/snapshots/session-base', as('alpha'));
    assert.equal(del.status, 409, del.text);
    // Nor replaced by a snapshot of what the session has done so far.
    const replace = await call(t.url, 'POST', '/v1/tenants/alpha/snapshots', {
      ...as('alpha'),
      body: { name: 'session-base', reuse: true },
    });
    assert.equal(replace.status, 409, replace.text);

    agent.changes = [
      { disk: 'root', path: '/etc/motd', change: 'modified', type: 'file' },
      { disk: 'data', path: '/workspace/out.txt', change: 'added', type: 'file' },
    ];
    const changes = await call(t.url, 'GET', `/v1/tenants/alpha/sessions/${s.id}/changes`, as('alpha'));
    assert.equal(changes.status, 200, changes.text);
    assert.deepEqual(changes.body, { since: 'session-base', changes: agent.changes, truncated: false });

    const shown = await call(t.url, 'GET', `/v1/tenants/alpha/sessions/${s.id}`, as('alpha'));
    assert.equal(shown.body.state, 'active');
    const other = await call(t.url, 'GET', `/v1/tenants/alpha/sessions/${s.id}`, as('beta'));
    assert.equal(other.status, 404);
    const viaBeta = await call(t.url, 'GET', `/v1/tenants/beta/sessions/${s.id}`, as('beta'));
    assert.equal(viaBeta.status, 404, 'a session id is only found under its own tenant');

    const reverts = agent.reverts.length;
    const ended = await call(t.url, 'POST', `/v1/tenants/alpha/sessions/${s.id}/end`, {
      ...as('alpha'),
      body: {},
    });
    assert.equal(ended.status, 200, ended.text);
    assert.equal(ended.body.state, 'ended');
    assert.equal(ended.body.outcome, 'reverted');
    assert.ok(ended.body.endedAt);
    assert.equal(agent.credentials.has(vm), false);
    assert.deepEqual(agent.reverts.slice(reverts), [{ vmId: vm, name: 'session-base' }]);
    // Ending twice answers the ended session; its changes are gone with it.
    const twice = await call(t.url, 'POST', `/v1/tenants/alpha/sessions/${s.id}/end`, {
      ...as('alpha'),
      body: {},
    });
    assert.equal(twice.status, 200);
    assert.equal(agent.reverts.length, reverts + 1);
    const late = await call(t.url, 'GET', `/v1/tenants/alpha/sessions/${s.id}/changes`, as('alpha'));
    assert.equal(late.status, 409);

    const events = (await auditOf('alpha')).filter((e) => e.action.startsWith('tenant.session.'));
    assert.ok(events.some((e) => e.action === 'tenant.session.create' && e.target === `alpha:${s.id}`));
    assert.ok(events.some((e) => e.action === 'tenant.session.create' && e.result === 'CONFLICT'));
    assert.ok(events.some((e) => e.action === 'tenant.session.end' && e.target === `alpha:${s.id}`));
  });

  test('end with keep removes the credentials and does not revert', async () => {
    const vm = vmIdOfTenant(ids.alpha!);
    const s = (
      await call(t.url, 'POST', '/v1/tenants/alpha/sessions', {
        ...as('alpha'),
        body: { env: { K: 'value' } },
      })
    ).body;
    const reverts = agent.reverts.length;
    const kept = await call(t.url, 'POST', `/v1/tenants/alpha/sessions/${s.id}/end`, {
      ...as('alpha'),
      body: { keep: true },
    });
    assert.equal(kept.status, 200, kept.text);
    assert.equal(kept.body.outcome, 'kept');
    assert.equal(agent.reverts.length, reverts);
    assert.equal(agent.credentials.has(vm), false);
    const list = await call(t.url, 'GET', '/v1/tenants/alpha/sessions', as('alpha'));
    assert.equal(list.body.sessions[0].id, s.id);
    assert.ok(list.body.sessions.length >= 2);
  });

  test('maxDurationMs may be shorter than WARREN_SESSION_MAX_MS, never longer', async () => {
    const long = await call(t.url, 'POST', '/v1/tenants/beta/sessions', {
      ...as('beta'),
      body: { maxDurationMs: 3600_001 },
    });
    assert.equal(long.status, 422, long.text);
    assert.equal(long.body.error.code, 'QUOTA_EXCEEDED');
    assert.match(long.body.error.message, /WARREN_SESSION_MAX_MS/);
  });

  test('the expiry sweep ends an expired session with outcome expired and reverts it', async () => {
    const vm = vmIdOfTenant(ids.beta!);
    const s = (
      await call(t.url, 'POST', '/v1/tenants/beta/sessions', {
        ...as('beta'),
        body: { files: { f: 'x' }, maxDurationMs: 60_000 },
      })
    ).body;
    assert.equal(Date.parse(s.expiresAt) - Date.parse(s.createdAt), 60_000);
    assert.equal(await t.cp.tenantSessions.expire(Date.parse(s.expiresAt) - 1), 0);
    assert.equal(
      (await call(t.url, 'GET', `/v1/tenants/beta/sessions/${s.id}`, as('beta'))).body.state,
      'active',
    );
    const reverts = agent.reverts.length;
    assert.equal(await t.cp.tenantSessions.expire(Date.parse(s.expiresAt)), 1);
    const after = await call(t.url, 'GET', `/v1/tenants/beta/sessions/${s.id}`, as('beta'));
    assert.equal(after.body.state, 'ended');
    assert.equal(after.body.outcome, 'expired');
    assert.deepEqual(agent.reverts.slice(reverts), [{ vmId: vm, name: 'session-base' }]);
    assert.equal(agent.credentials.has(vm), false);
    const events = await auditOf('beta');
    assert.ok(events.some((e) => e.action === 'tenant.session.expire' && e.target === `beta:${s.id}`));
    // Nothing left to expire.
    assert.equal(await t.cp.tenantSessions.expire(Date.parse(s.expiresAt) + 3600_000), 0);
  });

  test('credentials the agent cannot place: removed again, VM reverted, session failed, no secret kept', async () => {
    const vm = vmIdOfTenant(ids.beta!);
    // A buggy agent that quotes what it was given in its error.
    agent.failNext.set('PUT credentials', {
      status: 503,
      code: 'GUEST_UNAVAILABLE',
      message: `cannot write ${SECRET}`,
    });
    const reverts = agent.reverts.length;
    const r = await call(t.url, 'POST', '/v1/tenants/beta/sessions', {
      ...as('beta'),
      body: { files: { 'token.txt': SECRET } },
    });
    assert.equal(r.status, 503, r.text);
    assert.equal(r.body.error.code, 'GUEST_UNAVAILABLE');
    assert.match(r.body.error.message, /the session was ended and the VM reverted/);
    assert.ok(!r.text.includes(SECRET), r.text);
    assert.equal(agent.credentials.has(vm), false);
    assert.deepEqual(agent.reverts.slice(reverts), [{ vmId: vm, name: 'session-base' }]);
    const list = await call(t.url, 'GET', '/v1/tenants/beta/sessions', as('beta'));
    assert.equal(list.body.sessions[0].state, 'failed');
    assert.equal(list.body.sessions[0].error.code, 'GUEST_UNAVAILABLE');
    // The slot is free again.
    const next = await call(t.url, 'POST', '/v1/tenants/beta/sessions', { ...as('beta'), body: {} });
    assert.equal(next.status, 201, next.text);
    assert.equal(
      (
        await call(t.url, 'POST', `/v1/tenants/beta/sessions/${next.body.id}/end`, {
          ...as('beta'),
          body: {},
        })
      ).status,
      200,
    );
  });

  test('credentials that cannot be removed from a kept VM keep the session active, so its end can be retried', async () => {
    const s = (
      await call(t.url, 'POST', '/v1/tenants/beta/sessions', { ...as('beta'), body: { env: { A: 'b' } } })
    ).body;
    agent.failNext.set('DELETE credentials', {
      status: 503,
      code: 'GUEST_UNAVAILABLE',
      message: 'guest gone quiet',
    });
    const first = await call(t.url, 'POST', `/v1/tenants/beta/sessions/${s.id}/end`, {
      ...as('beta'),
      body: { keep: true },
    });
    assert.equal(first.status, 503, first.text);
    assert.match(first.body.error.message, /stays active/);
    const mid = await call(t.url, 'GET', `/v1/tenants/beta/sessions/${s.id}`, as('beta'));
    assert.equal(mid.body.state, 'active');
    assert.equal(mid.body.error.code, 'GUEST_UNAVAILABLE');
    const retry = await call(t.url, 'POST', `/v1/tenants/beta/sessions/${s.id}/end`, {
      ...as('beta'),
      body: { keep: true },
    });
    assert.equal(retry.status, 200, retry.text);
    assert.equal(retry.body.outcome, 'kept');
    assert.equal(retry.body.error, null);
  });

  test('one snapshot or session step per tenant: a revert while an end reverts is refused, another tenant is not held', async () => {
    const s = (await call(t.url, 'POST', '/v1/tenants/alpha/sessions', { ...as('alpha'), body: {} })).body;
    let release!: () => void;
    agent.revertGate = new Promise<void>((r) => (release = r));
    try {
      const ending = call(t.url, 'POST', `/v1/tenants/alpha/sessions/${s.id}/end`, {
        ...as('alpha'),
        body: {},
      });
      await until('the end is reverting', () => agent.reverting === 1, 10_000, 5);
      const revert = await call(
        t.url,
        'POST',
        '/v1/tenants/alpha/snapshots/session-base/revert',
        as('alpha'),
      );
      assert.equal(revert.status, 409, revert.text);
      assert.equal(revert.body.error.code, 'CONFLICT');
      assert.match(revert.body.error.message, /busy with a session end/);
      for (const body of [{}, { name: 'x' }]) {
        const snap = await call(t.url, 'POST', '/v1/tenants/alpha/snapshots', { ...as('alpha'), body });
        assert.equal(snap.status, 409, snap.text);
      }
      // The sweep leaves a busy tenant for its next pass.
      assert.equal(await t.cp.tenantSessions.expire(Date.now() + 24 * 3600_000), 0);
      const other = await call(t.url, 'POST', '/v1/tenants/beta/snapshots', {
        ...as('beta'),
        body: { name: 'free' },
      });
      assert.equal(other.status, 201, other.text);
      release();
      const done = await ending;
      assert.equal(done.status, 200, done.text);
      assert.equal(done.body.outcome, 'reverted');
    } finally {
      release();
      agent.revertGate = undefined;
    }
  });

  test('a stopped tenant: snapshot create, revert and session start are TENANT_NOT_RUNNING; list still works', async () => {
    assert.equal((await call(t.url, 'POST', '/v1/tenants/beta/stop', as('beta'))).status, 202);
    await converge(
      [agent],
      async () => (await call(t.url, 'GET', '/v1/tenants/beta', as('beta'))).body.state === 'stopped',
    );
    for (const [method, path] of [
      ['POST', '/v1/tenants/beta/snapshots'],
      ['POST', '/v1/tenants/beta/snapshots/free/revert'],
      ['POST', '/v1/tenants/beta/sessions'],
    ] as const) {
      const r = await call(t.url, method, path, { ...as('beta'), body: {} });
      assert.equal(r.status, 409, `${path}: ${r.text}`);
      assert.equal(r.body.error.code, 'TENANT_NOT_RUNNING');
    }
    const list = await call(t.url, 'GET', '/v1/tenants/beta/snapshots', as('beta'));
    assert.equal(list.status, 200, list.text);
    assert.ok(list.body.snapshots.some((x: { name: string }) => x.name === 'free'));
    assert.equal((await call(t.url, 'POST', '/v1/tenants/beta/start', as('beta'))).status, 202);
    await convergeAllRunning(t, [agent]);
  });

  test('no credential is in the database files, the audit log or the log', async () => {
    // Every test above ran sessions with SECRET and ENV_SECRET (and the failure paths). Make
    // sure the agent did receive them, so finding none below means something.
    assert.ok(agent.seen.some((s) => s.body.includes(SECRET)));
    assert.ok(agent.seen.some((s) => s.body.includes(ENV_SECRET)));
    const dir = join(t.dataDir, 'control-plane');
    const files = (await readdir(dir)).filter((f) => f.startsWith('warren.db'));
    assert.ok(files.includes('warren.db'), files.join(' '));
    for (const f of files) {
      const bytes = await readFile(join(dir, f));
      for (const secret of [SECRET, ENV_SECRET]) {
        assert.equal(bytes.indexOf(secret), -1, `${f} holds a credential`);
        assert.equal(bytes.indexOf(Buffer.from(secret, 'utf16le')), -1, `${f} holds a credential (UTF-16)`);
      }
    }
    const audit = await call(t.url, 'GET', '/v1/audit?limit=1000', { token: t.adminToken });
    assert.ok(audit.body.events.length > 10);
    for (const secret of [SECRET, ENV_SECRET]) {
      assert.ok(!audit.text.includes(secret), 'the audit log holds a credential');
      assert.ok(!logs.join('\n').includes(secret), 'the log holds a credential');
    }
    const sessions = await call(t.url, 'GET', '/v1/tenants/alpha/sessions', as('alpha'));
    assert.ok(!sessions.text.includes(SECRET));
  });

  test('deleting a tenant deletes its session records', async () => {
    await tenant('doomed');
    await convergeAllRunning(t, [agent]);
    const s = await call(t.url, 'POST', '/v1/tenants/doomed/sessions', { ...as('doomed'), body: {} });
    assert.equal(s.status, 201, s.text);
    const rows = () =>
      t.cp.store.db.selectFrom('tenant_sessions').select('id').where('tenant_id', '=', ids.doomed!).execute();
    assert.equal((await rows()).length, 1);
    assert.equal((await call(t.url, 'DELETE', '/v1/tenants/doomed', { token: t.adminToken })).status, 202);
    await converge(
      [agent],
      async () => (await call(t.url, 'GET', '/v1/tenants/doomed', { token: t.adminToken })).status === 404,
    );
    assert.deepEqual(await rows(), []);
  });
});
