/**
 * Backups through the control plane's API: a real control plane (SQLite, its own master key
 * file and filesystem object store) and fake host agents whose backup and restore jobs run the
 * REAL @warren/backup library against that same object store (test/helpers/api.ts), so the
 * manifests, chunks, verify and GC here are the real format. Covered: create, list, show,
 * delete; tenant scoping; progress while a job runs; the tenant lock and the GC exclusion; a
 * host that loses a job; reconcile after a control-plane restart (host still knows the job;
 * host lost it with and without a manifest); retention and schedules through the scheduler's
 * clock; GC; verify of a flipped byte; restore into the same tenant and into a new one (placed
 * on a host with the image); tenant deletion; the master key file's checks and a wrong key.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  chmod,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { libraryFormat } from '@warren/control-plane';
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

/** Fast polling; the scheduler and periodic GC only run when a test calls `tick`. */
const SETTINGS = { backupPollMs: 20, backupScheduleMs: 0, backupGcIntervalMs: 0, backupDrillIntervalMs: 0 };
const CAPACITY = { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 };

let t: TestControlPlane;
let agent: FakeAgent;
const keys: Record<string, string> = {};
const ids: Record<string, string> = {};

async function tenant(name: string): Promise<void> {
  const { created, key } = await createTenantWithKey(t, { name });
  keys[name] = key.token;
  ids[name] = created.tenant.id;
}
const as = (name: string) => ({ token: keys[name]! });
const vm = (name: string) => vmIdOfTenant(ids[name]!);

async function backupNow(name: string, body: object = {}): Promise<string> {
  const r = await call(t.url, 'POST', `/v1/tenants/${name}/backups`, { ...as(name), body });
  assert.equal(r.status, 202, r.text);
  assert.equal(r.body.state, 'running');
  return r.body.id;
}

/**
 * Waits until the backup has ended, and until the control plane has finished following its job
 * (the row is written a moment before the job lets go of the GC gate).
 */
async function settled(name: string, id: string): Promise<{ state: string; [k: string]: unknown }> {
  const done = await until(`backup ${id} ends`, async () => {
    const r = await call(t.url, 'GET', `/v1/tenants/${name}/backups/${id}`, as(name));
    return r.body.state !== 'running' && r.body;
  });
  await t.cp.backups.settled();
  return done;
}

async function objectsUnder(prefix: string, root = join(t.dataDir, 'objects')): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, rel: string) => {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isDirectory()) await walk(join(dir, e.name), `${rel}${e.name}/`);
      else out.push(`${rel}${e.name}`);
    }
  };
  await walk(join(root, prefix), prefix);
  return out.sort();
}

function release(): () => void {
  let open!: () => void;
  agent.backupGate = new Promise<void>((r) => (open = r));
  return () => {
    agent.backupGate = undefined;
    open();
  };
}

before(async () => {
  t = await openTestControlPlane(SETTINGS);
  agent = (await new FakeAgent('bk-host', CAPACITY).start(t.url, t.joinToken)).useObjectStore(
    join(t.dataDir, 'objects'),
  );
  for (const n of ['alpha', 'beta', 'gamma', 'delta']) await tenant(n);
  await convergeAllRunning(t, [agent]);
});

after(async () => {
  await agent?.stop();
  await t?.close();
});

describe('backups', () => {
  test('create, list, show, delete; each change audited as tenant:backup', async () => {
    const id = await backupNow('alpha');
    const done = await settled('alpha', id);
    assert.equal(done.state, 'complete', JSON.stringify(done));
    assert.equal(done.sizeBytes, agent.volumeOf(vm('alpha')).data.length);
    assert.ok((done.storedBytes as number) > 0);
    assert.ok(done.pointInTime);
    const list = await call(t.url, 'GET', '/v1/tenants/alpha/backups', as('alpha'));
    assert.equal(list.status, 200);
    assert.deepEqual(
      list.body.backups.map((b: { id: string }) => b.id),
      [id],
    );
    // The object store holds its manifest under its opaque id, and chunks by hash only.
    assert.deepEqual(await objectsUnder('manifests/'), [`manifests/${id}`]);
    const chunks = await objectsUnder('chunks/');
    assert.ok(chunks.length >= 3);
    for (const c of chunks) assert.match(c, /^chunks\/[0-9a-f]{2}\/[0-9a-f]{64}$/);

    const del = await call(t.url, 'DELETE', `/v1/tenants/alpha/backups/${id}`, as('alpha'));
    assert.equal(del.status, 204, del.text);
    assert.equal((await call(t.url, 'GET', `/v1/tenants/alpha/backups/${id}`, as('alpha'))).status, 404);
    assert.deepEqual(await objectsUnder('manifests/'), []);
    const audit = await call(t.url, 'GET', `/v1/audit?tenant=${ids.alpha}&limit=100`, {
      token: t.adminToken,
    });
    const actions = audit.body.events.map(
      (e: { action: string; target: string }) => `${e.action} ${e.target}`,
    );
    assert.ok(actions.includes(`tenant.backup.create alpha:${id}`), actions.join('\n'));
    assert.ok(actions.includes(`tenant.backup.delete alpha:${id}`), actions.join('\n'));
    // What was left of it goes at the next GC: nothing references those chunks now.
    const gc = await t.cp.backups.gc();
    assert.equal(gc.ran, true);
    assert.deepEqual(await objectsUnder('chunks/'), []);
  });

  test("another tenant's key gets NOT_FOUND for a backup, and cannot restore into a new tenant", async () => {
    const id = await backupNow('alpha');
    assert.equal((await settled('alpha', id)).state, 'complete');
    for (const [m, p] of [
      ['GET', `/v1/tenants/alpha/backups/${id}`],
      ['GET', `/v1/tenants/beta/backups/${id}`],
      ['DELETE', `/v1/tenants/beta/backups/${id}`],
      ['POST', `/v1/tenants/beta/backups/${id}/verify`],
      ['POST', `/v1/tenants/beta/backups/${id}/restore`],
    ] as const) {
      const r = await call(t.url, m, p, { ...as('beta'), body: {} });
      assert.equal(r.status, 404, `${m} ${p}: ${r.text}`);
      assert.equal(r.body.error.code, 'NOT_FOUND');
    }
    const clone = await call(t.url, 'POST', `/v1/tenants/alpha/backups/${id}/restore`, {
      ...as('alpha'),
      body: { newTenant: 'alpha-clone' },
    });
    assert.equal(clone.status, 403, clone.text);
    assert.equal(clone.body.error.code, 'FORBIDDEN');
    // Still there for alpha.
    assert.equal((await call(t.url, 'GET', `/v1/tenants/alpha/backups/${id}`, as('alpha'))).status, 200);
  });

  test('progress is visible while a backup runs; a second backup and a restore wait, a snapshot does not; GC waits', async () => {
    const previous = await backupNow('beta');
    assert.equal((await settled('beta', previous)).state, 'complete');
    const open = release();
    const id = await backupNow('beta');
    // A chunk name no backup writes (real ones are keyed hashes of their content).
    const stray = `chunks/ee/${'e'.repeat(64)}`;
    try {
      const running = await until('progress shows', async () => {
        const r = await call(t.url, 'GET', `/v1/tenants/beta/backups/${id}`, as('beta'));
        return r.body.state === 'running' && r.body.progress?.bytesTotal > 0 && r.body;
      });
      assert.equal(running.progress.bytesTotal, agent.volumeOf(vm('beta')).data.length);
      const second = await call(t.url, 'POST', '/v1/tenants/beta/backups', { ...as('beta'), body: {} });
      assert.equal(second.status, 409);
      assert.match(second.body.error.message, /already has a backup running/);
      const restore = await call(t.url, 'POST', `/v1/tenants/beta/backups/${previous}/restore`, {
        ...as('beta'),
        body: {},
      });
      assert.equal(restore.status, 409, restore.text);
      assert.match(restore.body.error.message, new RegExp(`being backed up \\(${id}\\)`));
      // The host orders a snapshot with the backup's point in time itself: not held up here
      // (a session's end, which reverts, must not wait hours for a backup).
      const snap = await call(t.url, 'POST', '/v1/tenants/beta/snapshots', { ...as('beta'), body: {} });
      assert.equal(snap.status, 201, snap.text);
      // A stray chunk GC would delete stays while the backup runs: GC does not run.
      await mkdir(join(t.dataDir, 'objects', 'chunks', 'ee'), { recursive: true });
      await writeFile(join(t.dataDir, 'objects', stray), 'stray');
      assert.deepEqual(await t.cp.backups.gc(), { ran: false, deletedObjects: 0 });
      assert.ok((await objectsUnder('chunks/ee/')).includes(stray));
    } finally {
      open();
    }
    assert.equal((await settled('beta', id)).state, 'complete');
    const gc = await t.cp.backups.gc();
    assert.equal(gc.ran, true);
    // Only the stray goes: real chunks are named by a keyed hash, so one may share its prefix.
    assert.ok(!(await objectsUnder('chunks/ee/')).includes(stray), 'GC left the stray chunk');
    // A crashed upload's temporary file goes too, once older than a job may run.
    const tmp = join(t.dataDir, 'objects', 'chunks', 'ee', '.tmp-crashed');
    await writeFile(tmp, 'half');
    const old = new Date(Date.now() - 7 * 3600_000);
    await utimes(tmp, old, old);
    assert.equal((await t.cp.backups.gc()).ran, true);
    await assert.rejects(stat(tmp), /ENOENT/);
    // A restore meanwhile holds the tenant: no backup starts under it.
    let restored!: () => void;
    agent.restoreGate = new Promise<void>((r) => (restored = r));
    const r = await call(t.url, 'POST', `/v1/tenants/beta/backups/${previous}/restore`, {
      ...as('beta'),
      body: {},
    });
    assert.equal(r.status, 202, r.text);
    try {
      const during = await call(t.url, 'POST', '/v1/tenants/beta/backups', { ...as('beta'), body: {} });
      assert.equal(during.status, 409, during.text);
      assert.match(during.body.error.message, /busy with a restore/);
      assert.deepEqual(await t.cp.backups.gc(), { ran: false, deletedObjects: 0 });
    } finally {
      agent.restoreGate = undefined;
      restored();
    }
    await until('the restore ends', async () => {
      const o = await call(t.url, 'GET', `/v1/operations/${r.body.operation.id}`, as('beta'));
      return o.body.status === 'succeeded';
    });
  });

  test('a host that loses the job: no manifest, so the backup fails; what it wrote later goes at GC', async () => {
    const open = release();
    const id = await backupNow('gamma');
    await until('the job reads', () => agent.jobs.get(id)?.progress.bytesTotal);
    agent.forgetJobs();
    const failed = await settled('gamma', id);
    assert.equal(failed.state, 'failed');
    assert.equal((failed.error as { code: string }).code, 'HOST_UNAVAILABLE');
    assert.match((failed.error as { message: string }).message, /does not know the job/);
    // The fake's job goes on and commits a manifest nobody lists: GC removes it.
    open();
    await until('the orphan manifest is written', async () =>
      (await objectsUnder('manifests/')).includes(`manifests/${id}`),
    );
    await until('the job ends', () => agent.jobs.size === 0 && true);
    assert.equal((await t.cp.backups.gc()).ran, true);
    assert.ok(!(await objectsUnder('manifests/')).includes(`manifests/${id}`));
    // Listed with its error for WARREN_OPERATION_RETENTION_DAYS (7), then gone (the sweeper, every 5 s).
    await t.cp.store.db
      .updateTable('backups')
      .set({ completed_at: new Date(Date.now() - 8 * 86_400_000).toISOString() })
      .where('id', '=', id)
      .execute();
    await until('the old failed backup is swept', async () =>
      (await call(t.url, 'GET', `/v1/tenants/gamma/backups/${id}`, as('gamma'))).status === 404
        ? true
        : undefined,
    );
  });

  test('verify: a flipped byte in a chunk is reported naming the backup and the object', async () => {
    const before = new Set(await objectsUnder('chunks/'));
    const id = await backupNow('delta');
    assert.equal((await settled('delta', id)).state, 'complete');
    const ok = await call(t.url, 'POST', `/v1/tenants/delta/backups/${id}/verify`, as('delta'));
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.body.ok, true, ok.text);
    assert.ok(ok.body.chunks >= 3);
    // delta's volume is its own content, so the chunks its backup added are its.
    const chunk = (await objectsUnder('chunks/')).find((c) => !before.has(c))!;
    assert.ok(chunk);
    const path = join(t.dataDir, 'objects', chunk);
    const original = await readFile(path);
    const flipped = Buffer.from(original);
    flipped[flipped.length - 20]! ^= 0x01;
    await writeFile(path, flipped);
    try {
      const bad = await call(t.url, 'POST', `/v1/tenants/delta/backups/${id}/verify`, as('delta'));
      assert.equal(bad.status, 200, bad.text);
      assert.equal(bad.body.ok, false);
      assert.equal(bad.body.problems.length, 1, bad.text);
      assert.equal(bad.body.problems[0].object, chunk);
      assert.match(bad.body.problems[0].problem, new RegExp(id));
      const audit = await call(t.url, 'GET', `/v1/audit?tenant=${ids.delta}&limit=100`, {
        token: t.adminToken,
      });
      assert.ok(audit.body.events.some((e: { action: string }) => e.action === 'tenant.backup.verify'));
    } finally {
      await writeFile(path, original);
    }
  });
});

describe('restores', () => {
  test("into the same tenant: its volume is the backup's again, as an operation with progress", async () => {
    const original = Buffer.from(agent.volumeOf(vm('beta')).data);
    const id = await backupNow('beta');
    assert.equal((await settled('beta', id)).state, 'complete');
    // The guest writes on.
    agent.volumeOf(vm('beta')).data.fill(7, 0, 4096);
    const r = await call(t.url, 'POST', `/v1/tenants/beta/backups/${id}/restore`, {
      ...as('beta'),
      body: {},
    });
    assert.equal(r.status, 202, r.text);
    assert.equal(r.body.operation.kind, 'restore');
    assert.equal(r.body.tenant.name, 'beta');
    const op = await until('the restore ends', async () => {
      const o = await call(t.url, 'GET', `/v1/operations/${r.body.operation.id}`, as('beta'));
      return o.body.status !== 'running' && o.body;
    });
    assert.equal(op.status, 'succeeded', JSON.stringify(op));
    assert.equal(op.progress.bytesDone, original.length);
    assert.ok(agent.volumeOf(vm('beta')).data.equals(original));
    assert.deepEqual(agent.restores.at(-1), { vmId: vm('beta'), backup: id, start: 'as-before' });
    const audit = await call(t.url, 'GET', `/v1/audit?tenant=${ids.beta}&limit=100`, { token: t.adminToken });
    assert.ok(
      audit.body.events.some(
        (e: { action: string; target: string }) =>
          e.action === 'tenant.backup.restore' && e.target === `beta:${id}`,
      ),
    );
  });

  test('a running backup can be neither restored nor deleted', async () => {
    const open = release();
    const id = await backupNow('gamma');
    try {
      const r = await call(t.url, 'POST', `/v1/tenants/gamma/backups/${id}/restore`, {
        ...as('gamma'),
        body: {},
      });
      assert.equal(r.status, 409, r.text);
      const d = await call(t.url, 'DELETE', `/v1/tenants/gamma/backups/${id}`, as('gamma'));
      assert.equal(d.status, 409, d.text);
    } finally {
      open();
    }
    assert.equal((await settled('gamma', id)).state, 'complete');
  });

  test('into a new tenant (admin): made like the backup, placed on a host with the image, restored, started', async () => {
    // A second host, roomier but without the image: the scheduler must not pick it.
    const other = await new FakeAgent('bk-noimage', {
      vcpus: 256,
      memoryMiB: 1 << 20,
      diskMiB: 10_000_000,
    }).start(t.url, t.joinToken);
    other.images = [];
    other.useObjectStore(join(t.dataDir, 'objects'));
    try {
      await other.heartbeat();
      const id = await backupNow('alpha');
      assert.equal((await settled('alpha', id)).state, 'complete');
      const source = Buffer.from(agent.volumeOf(vm('alpha')).data);
      const r = await call(t.url, 'POST', `/v1/tenants/alpha/backups/${id}/restore`, {
        token: t.adminToken,
        body: { newTenant: 'alpha-clone' },
      });
      assert.equal(r.status, 202, r.text);
      assert.equal(r.body.tenant.name, 'alpha-clone');
      assert.equal(r.body.tenant.hostId, agent.hostId);
      assert.equal(r.body.operation.kind, 'restore');
      const cloneVm = vmIdOfTenant(r.body.tenant.id);
      // The hosts converge the new tenant; the restore follows once its VM exists.
      await converge(
        [agent, other],
        async () => {
          const o = await call(t.url, 'GET', `/v1/operations/${r.body.operation.id}`, {
            token: t.adminToken,
          });
          return o.body.status !== 'running';
        },
        200,
      );
      const op = await call(t.url, 'GET', `/v1/operations/${r.body.operation.id}`, { token: t.adminToken });
      assert.equal(op.body.status, 'succeeded', op.text);
      assert.ok(agent.volumeOf(cloneVm).data.equals(source));
      assert.deepEqual(agent.restores.at(-1), { vmId: cloneVm, backup: id, start: 'always' });
      const clone = await call(t.url, 'GET', '/v1/tenants/alpha-clone', { token: t.adminToken });
      const orig = await call(t.url, 'GET', '/v1/tenants/alpha', { token: t.adminToken });
      for (const k of ['imageId', 'vcpus', 'memoryMiB', 'diskMiB', 'quota', 'network', 'dashboardPort'])
        assert.deepEqual(clone.body[k], orig.body[k], k);
      assert.equal(clone.body.state, 'running');
      assert.ok(!other.seen.some((s) => s.url.includes('/restore')));
      // A name taken is refused before anything is made.
      const taken = await call(t.url, 'POST', `/v1/tenants/alpha/backups/${id}/restore`, {
        token: t.adminToken,
        body: { newTenant: 'beta' },
      });
      assert.equal(taken.status, 409, taken.text);
    } finally {
      await other.stop();
    }
  });
});

describe('retention, schedules and GC', () => {
  test('the keep rules prune through the scheduler clock, then GC takes what only pruned backups held', async () => {
    await tenant('epsilon');
    await convergeAllRunning(t, [agent]);
    // Two hours ahead, on the hour: the scheduler's clock runs past the real one.
    const base = (Math.ceil(Date.now() / 3600_000) + 2) * 3600_000;
    const at = (minutes: number) => new Date(base + minutes * 60_000).toISOString();
    const times = [at(10), at(40), at(70), at(130)];
    const made: string[] = [];
    for (const when of times) {
      agent.pointInTime = () => when;
      // Each backup's content differs, so each holds a chunk of its own.
      agent.volumeOf(vmIdOfTenant(ids.epsilon!)).data.write(when, 0);
      const id = await backupNow('epsilon');
      assert.equal((await settled('epsilon', id)).state, 'complete');
      made.push(id);
    }
    agent.pointInTime = undefined;
    const policy = await call(t.url, 'PUT', '/v1/tenants/epsilon/backup-policy', {
      ...as('epsilon'),
      body: { everyMinutes: null, keepLast: 1, keepHourly: 2, keepDaily: 0, keepWeekly: 0 },
    });
    assert.equal(policy.status, 200, policy.text);
    const chunksBefore = (await objectsUnder('chunks/')).length;
    const tick = await t.cp.backups.schedule.tick(base + 200 * 60_000);
    // Newest (12:10) by keepLast; hours 12 and 11 by keepHourly: 12:10 and 11:10; 10:40 and 10:10 go.
    assert.deepEqual(new Set(tick.pruned), new Set([made[0], made[1]]));
    assert.equal(tick.gc, true);
    const left = await call(t.url, 'GET', '/v1/tenants/epsilon/backups', as('epsilon'));
    assert.deepEqual(
      left.body.backups.map((b: { id: string }) => b.id),
      [made[3], made[2]],
    );
    assert.ok((await objectsUnder('chunks/')).length < chunksBefore);
    for (const id of [made[2], made[3]]) {
      const v = await call(t.url, 'POST', `/v1/tenants/epsilon/backups/${id}/verify`, as('epsilon'));
      assert.equal(v.body.ok, true, v.text);
    }
    // Another prune right away waits for WARREN_BACKUP_GC_MIN_INTERVAL_MS (1 h) before its GC.
    agent.pointInTime = () => at(190);
    const extra = await backupNow('epsilon');
    assert.equal((await settled('epsilon', extra)).state, 'complete');
    agent.pointInTime = undefined;
    const soon = await t.cp.backups.schedule.tick(base + 200 * 60_000 + 60_000);
    assert.deepEqual(soon.pruned, [made[2]]);
    assert.equal(soon.gc, false);
    assert.ok((await objectsUnder('manifests/')).every((m) => m !== `manifests/${made[2]}`));
    const later = await t.cp.backups.schedule.tick(base + 261 * 60_000);
    assert.deepEqual(later.pruned, []);
    assert.equal(later.gc, true);
    const audit = await call(t.url, 'GET', `/v1/audit?tenant=${ids.epsilon}&limit=100`, {
      token: t.adminToken,
    });
    assert.ok(
      audit.body.events.some(
        (e: { action: string; actor: string; target: string }) =>
          e.action === 'tenant.backup.prune' && e.actor === 'scheduler' && e.target === `epsilon:${made[0]}`,
      ),
    );
  });

  test('a schedule starts backups when due, by the scheduler clock', async () => {
    await tenant('zeta');
    await convergeAllRunning(t, [agent]);
    // More often than WARREN_BACKUP_MIN_EVERY_MINUTES (15) is refused.
    const often = await call(t.url, 'PUT', '/v1/tenants/zeta/backup-policy', {
      ...as('zeta'),
      body: { everyMinutes: 1 },
    });
    assert.equal(often.status, 422, often.text);
    assert.match(often.body.error.message, /WARREN_BACKUP_MIN_EVERY_MINUTES = 15/);
    const set = await call(t.url, 'PUT', '/v1/tenants/zeta/backup-policy', {
      ...as('zeta'),
      body: { everyMinutes: 60 },
    });
    assert.equal(set.status, 200, set.text);
    assert.deepEqual(set.body, {
      everyMinutes: 60,
      keepLast: 1,
      keepHourly: 24,
      keepDaily: 7,
      keepWeekly: 4,
    });
    const now = Date.now();
    const first = await t.cp.backups.schedule.tick(now);
    assert.equal(first.started.length, 1);
    assert.equal((await settled('zeta', first.started[0]!)).state, 'complete');
    assert.deepEqual((await t.cp.backups.schedule.tick(now + 30 * 60_000)).started, []);
    const second = await t.cp.backups.schedule.tick(now + 61 * 60_000);
    assert.equal(second.started.length, 1);
    const b = await settled('zeta', second.started[0]!);
    assert.equal(b.state, 'complete');
    assert.equal(b.trigger, 'scheduled');
  });
});

describe('after a control-plane restart', () => {
  let r: TestControlPlane;
  let host: FakeAgent;
  let key = '';
  let dir = '';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wcp-bk-'));
    r = await openTestControlPlane(SETTINGS, dir);
    host = (await new FakeAgent('rs-host', CAPACITY).start(r.url, r.joinToken)).useObjectStore(
      join(dir, 'objects'),
    );
    const { key: k } = await createTenantWithKey(r, { name: 'omega' });
    key = k.token;
    await convergeAllRunning(r, [host]);
  });

  after(async () => {
    await host?.stop();
    await r?.close();
  });

  /** Closes the control plane (its rows stay as they are) and opens it again on the same data. */
  async function restart(between: () => Promise<void> = async () => {}): Promise<void> {
    await r.close(true);
    await between();
    r = await openTestControlPlane(SETTINGS, dir);
    host.cpUrl = r.url;
  }

  async function start(): Promise<{ id: string; open: () => void }> {
    let open!: () => void;
    host.backupGate = new Promise<void>((x) => (open = x));
    const b = await call(r.url, 'POST', '/v1/tenants/omega/backups', { token: key, body: {} });
    assert.equal(b.status, 202, b.text);
    await until('the job reads', () => host.jobs.get(b.body.id)?.progress.bytesTotal);
    return {
      id: b.body.id,
      open: () => {
        host.backupGate = undefined;
        open();
      },
    };
  }

  const state = async (id: string) =>
    (await call(r.url, 'GET', `/v1/tenants/omega/backups/${id}`, { token: key })).body;

  test('the host still knows the job: it is followed again to its end; GC waits for it', async () => {
    const { id, open } = await start();
    await restart();
    try {
      assert.equal((await state(id)).state, 'running');
      // The row from before the restart keeps GC out until it ends.
      assert.deepEqual(await r.cp.backups.gc(), { ran: false, deletedObjects: 0 });
    } finally {
      open();
    }
    const done = await until('complete', async () => (await state(id)).state === 'complete' && state(id));
    assert.equal(done.mode, 'full');
    await r.cp.backups.settled();
    assert.equal((await r.cp.backups.gc()).ran, true);
  });

  test('the host lost the job but its manifest exists: complete', async () => {
    const { id, open } = await start();
    await restart(async () => {
      open();
      await until('the job ends', () => host.jobs.get(id)?.state === 'succeeded');
      host.forgetJobs();
    });
    const done = await until('decided', async () => {
      const b = await state(id);
      return b.state !== 'running' && b;
    });
    assert.equal(done.state, 'complete', JSON.stringify(done));
    assert.ok(done.pointInTime);
    const v = await call(r.url, 'POST', `/v1/tenants/omega/backups/${id}/verify`, { token: key });
    assert.equal(v.body.ok, true, v.text);
  });

  test('the host lost the job and there is no manifest: failed, never listed as usable', async () => {
    const { id, open } = await start();
    await restart(async () => host.forgetJobs());
    try {
      const done = await until('decided', async () => {
        const b = await state(id);
        return b.state !== 'running' && b;
      });
      assert.equal(done.state, 'failed');
      assert.match(done.error.message, /wrote no manifest/);
    } finally {
      open();
    }
  });

  test('a tenant deleted takes its backups and its key with it; GC then empties the store of them', async () => {
    const b = await call(r.url, 'POST', '/v1/tenants/omega/backups', { token: key, body: {} });
    assert.equal(b.status, 202, b.text);
    await until('complete', async () => (await state(b.body.id)).state === 'complete');
    await until('the fake job ends', () => [...host.jobs.values()].every((j) => j.state !== 'running'));
    assert.ok((await objectsUnder('chunks/', join(dir, 'objects'))).length > 0);
    const del = await call(r.url, 'DELETE', '/v1/tenants/omega', { token: r.adminToken });
    assert.equal(del.status, 202, del.text);
    await converge(
      [host],
      async () => (await call(r.url, 'GET', '/v1/tenants/omega', { token: r.adminToken })).status === 404,
    );
    await r.cp.backups.settled();
    assert.deepEqual(await r.cp.store.db.selectFrom('backups').selectAll().execute(), []);
    assert.deepEqual(await r.cp.store.db.selectFrom('tenant_keys').selectAll().execute(), []);
    assert.equal((await r.cp.backups.gc()).ran, true);
    assert.deepEqual(await objectsUnder('chunks/', join(dir, 'objects')), []);
    assert.deepEqual(await objectsUnder('manifests/', join(dir, 'objects')), []);
  });
});

describe('the master key file', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  /** The error a start on `d` fails with; a start that succeeds is closed and fails the test. */
  async function refusal(d: string): Promise<Error & { code?: string }> {
    let opened: TestControlPlane;
    try {
      opened = await openTestControlPlane(SETTINGS, d);
    } catch (e) {
      return e as Error & { code?: string };
    }
    await opened.close(true);
    return assert.fail('the control plane started with that master key file');
  }
  async function dataDir(): Promise<string> {
    const d = await mkdtemp(join(tmpdir(), 'wcp-mk-'));
    dirs.push(d);
    return d;
  }

  test('is made at first start: 32 bytes, mode 0600; the same key on the next start', async () => {
    const d = await dataDir();
    const c = await openTestControlPlane(SETTINGS, d);
    await c.close(true);
    const st = await stat(join(d, 'master.key'));
    assert.equal(st.size, 32);
    assert.equal(st.mode & 0o777, 0o600);
    const first = await readFile(join(d, 'master.key'));
    const again = await openTestControlPlane(SETTINGS, d);
    await again.close(true);
    assert.ok((await readFile(join(d, 'master.key'))).equals(first));
  });

  test('readable by group or others, of the wrong length, or a symlink: the start is refused', async () => {
    for (const [why, prepare, pattern] of [
      [
        'group-readable',
        async (p: string) => writeFile(p, randomBytes(32), { mode: 0o640 }),
        /group or others \(mode 640\)/,
      ],
      [
        'world-readable',
        async (p: string) => writeFile(p, randomBytes(32), { mode: 0o604 }),
        /group or others/,
      ],
      ['short', async (p: string) => writeFile(p, randomBytes(31), { mode: 0o600 }), /31 bytes, not 32/],
      ['empty', async (p: string) => writeFile(p, '', { mode: 0o600 }), /0 bytes, not 32/],
      [
        'a symlink',
        async (p: string) => {
          await writeFile(`${p}.real`, randomBytes(32), { mode: 0o600 });
          await symlink(`${p}.real`, p);
        },
        /cannot be read \(ELOOP\)/,
      ],
      ['a directory', async (p: string) => mkdir(p), /cannot be read|not a regular file/],
    ] as const) {
      const d = await dataDir();
      const p = join(d, 'master.key');
      await prepare(p);
      await chmod(p, (await stat(p)).mode & 0o777).catch(() => {});
      const e = await refusal(d);
      assert.equal(e.code, 'INVALID_ARGUMENT', `${why}: ${e.message}`);
      assert.match(e.message, /WARREN_MASTER_KEY_FILE/, why);
      assert.match(e.message, pattern, `${why}: ${e.message}`);
      // Refused before anything was made: no database.
      assert.ok(!(await readdir(d)).includes('control-plane'), why);
    }
  });

  test('another master key: tenant keys do not unwrap (BACKUP_KEY_REJECTED) and GC deletes nothing', async () => {
    const d = await dataDir();
    let c = await openTestControlPlane(SETTINGS, d);
    const h = (await new FakeAgent('mk-host', CAPACITY).start(c.url, c.joinToken)).useObjectStore(
      join(d, 'objects'),
    );
    try {
      const { key } = await createTenantWithKey(c, { name: 'kappa' });
      await convergeAllRunning(c, [h]);
      const b = await call(c.url, 'POST', '/v1/tenants/kappa/backups', { token: key.token, body: {} });
      assert.equal(b.status, 202, b.text);
      await until('complete', async () => {
        const x = await call(c.url, 'GET', `/v1/tenants/kappa/backups/${b.body.id}`, { token: key.token });
        return x.body.state === 'complete';
      });
      await c.close(true);
      await writeFile(join(d, 'master.key'), randomBytes(32), { mode: 0o600 });
      c = await openTestControlPlane(SETTINGS, d);
      h.cpUrl = c.url;
      const objects = await objectsUnder('chunks/', join(d, 'objects'));
      const v = await call(c.url, 'POST', `/v1/tenants/kappa/backups/${b.body.id}/verify`, {
        token: key.token,
      });
      assert.equal(v.status, 500, v.text);
      assert.equal(v.body.error.code, 'BACKUP_KEY_REJECTED');
      const again = await call(c.url, 'POST', '/v1/tenants/kappa/backups', { token: key.token, body: {} });
      assert.equal(again.body.error.code, 'BACKUP_KEY_REJECTED', again.text);
      await assert.rejects(c.cp.backups.gc(), /BACKUP_KEY_REJECTED|does not open|wrapped by master key/);
      assert.deepEqual(await objectsUnder('chunks/', join(d, 'objects')), objects);
    } finally {
      await h.stop();
      await c.close(true);
    }
  });
});

describe('limits a tenant cannot lift', () => {
  let l: TestControlPlane;
  let host: FakeAgent;
  let token = '';
  /** While set, every verify waits for it before it reads anything. */
  let verifyGate: Promise<void> | undefined;
  let verifying = 0;

  before(async () => {
    const real = libraryFormat();
    l = await openTestControlPlane({ ...SETTINGS, tenantMaxBackups: 2 }, undefined, {
      backupFormat: {
        ...real,
        async verify(store, keys, id) {
          verifying++;
          await verifyGate;
          verifying--;
          return real.verify(store, keys, id);
        },
      },
    });
    host = (await new FakeAgent('lim-host', CAPACITY).start(l.url, l.joinToken)).useObjectStore(
      join(l.dataDir, 'objects'),
    );
    token = (await createTenantWithKey(l, { name: 'lambda' })).key.token;
    await convergeAllRunning(l, [host]);
  });

  after(async () => {
    await host?.stop();
    await l?.close();
  });

  async function backup(): Promise<{
    status: number;
    body: { id: string; error?: { code: string; message: string } };
  }> {
    const r = await call(l.url, 'POST', '/v1/tenants/lambda/backups', { token, body: {} });
    if (r.status === 202)
      await until('complete', async () => {
        const b = await call(l.url, 'GET', `/v1/tenants/lambda/backups/${r.body.id}`, { token });
        return b.body.state === 'complete';
      });
    return r;
  }

  test('WARREN_TENANT_MAX_BACKUPS: one more backup is QUOTA_EXCEEDED; deleting one makes room', async () => {
    const first = await backup();
    assert.equal(first.status, 202);
    assert.equal((await backup()).status, 202);
    const third = await backup();
    assert.equal(third.status, 422, JSON.stringify(third.body));
    assert.equal(third.body.error?.code, 'QUOTA_EXCEEDED');
    assert.match(third.body.error!.message, /WARREN_TENANT_MAX_BACKUPS = 2/);
    assert.equal(
      (await call(l.url, 'DELETE', `/v1/tenants/lambda/backups/${first.body.id}`, { token })).status,
      204,
    );
    assert.equal((await backup()).status, 202);
  });

  test('one verify per tenant at a time: a second one meanwhile is CONFLICT, not a second full read', async () => {
    const list = await call(l.url, 'GET', '/v1/tenants/lambda/backups', { token });
    const [a, b] = list.body.backups.map((x: { id: string }) => x.id);
    let open!: () => void;
    verifyGate = new Promise<void>((r) => (open = r));
    const first = call(l.url, 'POST', `/v1/tenants/lambda/backups/${a}/verify`, { token });
    try {
      await until('the first verify runs', () => verifying === 1);
      for (const id of [a, b]) {
        const again = await call(l.url, 'POST', `/v1/tenants/lambda/backups/${id}/verify`, { token });
        assert.equal(again.status, 409, again.text);
        assert.match(again.body.error.message, /a verify of tenant lambda's backups is running/);
      }
      assert.equal(verifying, 1);
    } finally {
      verifyGate = undefined;
      open();
    }
    assert.equal((await first).body.ok, true);
    assert.equal(
      (await call(l.url, 'POST', `/v1/tenants/lambda/backups/${b}/verify`, { token })).body.ok,
      true,
    );
  });
});
