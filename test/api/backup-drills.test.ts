/**
 * Restore drills through the control plane: a real control plane (SQLite, filesystem object
 * store) and a fake host agent whose backup and restore jobs run the real @warren/backup library
 * against that store (test/helpers/api.ts). Its restore answers the digests of the "files" it
 * wrote (the volume's chunks) and its exec answers `sha256sum` from the VM's volume as a guest
 * would. Covered: a drill passes and is shown on the backup and audited; a tampered chunk fails
 * the drill with BACKUP_CORRUPT; a guest whose files differ fails it with BACKUP_DRILL_FAILED;
 * the scratch tenant is gone afterwards each time; the scheduler drills the tenant that went
 * longest without one, one at a time; 0 turns scheduled drills off; a drill a control plane left
 * running is failed and its scratch tenant deleted at the next start; only the admin drills.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Backup, MAX_DRILL_FILES, vmIdOfTenant } from '@warren/protocol';
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

const SETTINGS = {
  backupPollMs: 20,
  backupScheduleMs: 0,
  backupGcIntervalMs: 0,
  backupDrillIntervalMs: 3600_000,
};
const CAPACITY = { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 };

let t: TestControlPlane;
let agent: FakeAgent;
const keys: Record<string, string> = {};
const ids: Record<string, string> = {};
const admin = () => ({ token: t.adminToken });

async function tenant(name: string): Promise<void> {
  const { created, key } = await createTenantWithKey(t, { name });
  keys[name] = key.token;
  ids[name] = created.tenant.id;
}

async function backupNow(name: string): Promise<string> {
  const r = await call(t.url, 'POST', `/v1/tenants/${name}/backups`, { token: keys[name]!, body: {} });
  assert.equal(r.status, 202, r.text);
  await until(`backup ${r.body.id} completes`, async () => {
    const b = await call(t.url, 'GET', `/v1/tenants/${name}/backups/${r.body.id}`, admin());
    assert.notEqual(b.body.state, 'failed', b.text);
    return b.body.state === 'complete';
  });
  await t.cp.backups.settled();
  return r.body.id;
}

async function scratchTenants(): Promise<string[]> {
  const r = await call(t.url, 'GET', '/v1/tenants', admin());
  return (r.body.tenants as { name: string }[]).map((x) => x.name).filter((n) => n.startsWith('drill-'));
}

/** Heartbeats until the backup's drill has ended and its scratch tenant is gone; the backup then. */
async function drillEnds(name: string, id: string): Promise<Backup> {
  let backup = {} as Backup;
  await converge(
    [agent],
    async () => {
      backup = (await call(t.url, 'GET', `/v1/tenants/${name}/backups/${id}`, admin())).body;
      return backup.drill?.state !== 'running' && (await scratchTenants()).length === 0;
    },
    500,
  );
  await t.cp.backups.settled();
  return backup;
}

before(async () => {
  t = await openTestControlPlane(SETTINGS);
  agent = (await new FakeAgent('drill-host', CAPACITY).start(t.url, t.joinToken)).useObjectStore(
    join(t.dataDir, 'objects'),
  );
  for (const n of ['alpha', 'beta', 'gamma']) await tenant(n);
  await convergeAllRunning(t, [agent]);
});

after(async () => {
  await agent?.stop();
  await t?.close();
});

describe('restore drills', () => {
  test('a drill restores into a scratch tenant, compares the files, passes, and deletes the scratch tenant', async () => {
    const id = await backupNow('alpha');
    const started = await call(t.url, 'POST', `/v1/tenants/alpha/backups/${id}/drill`, admin());
    assert.equal(started.status, 202, started.text);
    assert.equal(started.body.drill.state, 'running');
    // One at a time.
    const second = await call(t.url, 'POST', `/v1/tenants/alpha/backups/${id}/drill`, admin());
    assert.equal(second.status, 409, second.text);
    const b = await drillEnds('alpha', id);
    assert.equal(b.drill!.state, 'passed', JSON.stringify(b.drill));
    // The fake volume is 3 chunks and a short one; one chunk is zeros (a hole), still a file.
    assert.equal(b.drill!.filesChecked, 4);
    assert.equal(b.drill!.error, null);
    // The scratch tenant was restored into with the sample asked for, and its guest ran sha256sum.
    const restore = agent.seen.filter((s) => s.url.endsWith('/restore')).at(-1)!;
    assert.equal(JSON.parse(restore.body).sampleFiles, MAX_DRILL_FILES);
    const exec = agent.seen.filter((s) => s.url.endsWith('/exec')).at(-1)!;
    assert.deepEqual(JSON.parse(exec.body).argv.slice(0, 3), ['sha256sum', '--', '/workspace/chunk-0']);
    assert.notEqual(exec.url.split('/')[3], vmIdOfTenant(ids.alpha!));
    const audit = await call(t.url, 'GET', `/v1/audit?tenant=${ids.alpha}&limit=100`, admin());
    const drills = audit.body.events.filter((e: { action: string }) => e.action === 'tenant.backup.drill');
    assert.ok(
      drills.some((e: { result: string }) => e.result === 'passed'),
      audit.text,
    );
    // A tenant key may read the outcome but not run a drill (it makes a tenant).
    const mine = await call(t.url, 'GET', `/v1/tenants/alpha/backups/${id}`, { token: keys.alpha! });
    assert.equal(mine.body.drill.state, 'passed');
    const denied = await call(t.url, 'POST', `/v1/tenants/alpha/backups/${id}/drill`, { token: keys.alpha! });
    assert.equal(denied.status, 403, denied.text);
  });

  test('a tampered chunk fails the drill with BACKUP_CORRUPT, and the scratch tenant goes all the same', async () => {
    const before = new Set(await chunks());
    const id = await backupNow('beta');
    const chunk = (await chunks()).find((c) => !before.has(c))!;
    assert.ok(chunk);
    const path = join(t.dataDir, 'objects', chunk);
    const original = await readFile(path);
    const flipped = Buffer.from(original);
    flipped[flipped.length - 20]! ^= 0x01;
    await writeFile(path, flipped);
    try {
      const r = await call(t.url, 'POST', `/v1/tenants/beta/backups/${id}/drill`, admin());
      assert.equal(r.status, 202, r.text);
      const b = await drillEnds('beta', id);
      assert.equal(b.drill!.state, 'failed');
      assert.equal(b.drill!.error!.code, 'BACKUP_CORRUPT', JSON.stringify(b.drill));
      assert.match(b.drill!.error!.message, new RegExp(id));
      const list = await call(t.url, 'GET', '/v1/tenants/beta/backups', admin());
      assert.equal(list.body.backups.find((x: { id: string }) => x.id === id).drill.state, 'failed');
    } finally {
      await writeFile(path, original);
    }
  });

  test("a guest whose files differ from the host's reading fails the drill with BACKUP_DRILL_FAILED", async () => {
    const id = await backupNow('gamma');
    agent.guestDigest = (_vm, path, sha) => (path.endsWith('chunk-2') ? '0'.repeat(64) : sha);
    try {
      await call(t.url, 'POST', `/v1/tenants/gamma/backups/${id}/drill`, admin());
      const b = await drillEnds('gamma', id);
      assert.equal(b.drill!.state, 'failed');
      assert.equal(b.drill!.error!.code, 'BACKUP_DRILL_FAILED');
      assert.match(b.drill!.error!.message, /\/workspace\/chunk-2: the restored guest reads sha256 0{64}/);
      assert.equal(b.drill!.filesChecked, 2);
    } finally {
      agent.guestDigest = undefined;
    }
  });

  test('the scheduler drills the tenant that went longest without one, one at a time; 0 turns it off', async () => {
    // alpha, beta and gamma were drilled in that order above: alpha is the longest ago.
    const now = Date.now();
    const early = await t.cp.backups.schedule.tick(now);
    assert.equal(early.drill, undefined, 'not due before the interval has passed');
    const due = now + 2 * 3600_000;
    const first = await t.cp.backups.schedule.tick(due);
    const alphaBackups = await call(t.url, 'GET', '/v1/tenants/alpha/backups', admin());
    assert.equal(first.drill, alphaBackups.body.backups[0].id);
    // One runs: the next pass starts none.
    assert.equal((await t.cp.backups.schedule.tick(due)).drill, undefined);
    await drillEnds('alpha', first.drill!);
    // Now beta's drill (the tampered one, restored since) is the oldest.
    const second = await t.cp.backups.schedule.tick(due);
    const betaBackups = await call(t.url, 'GET', '/v1/tenants/beta/backups', admin());
    assert.equal(second.drill, betaBackups.body.backups[0].id);
    await drillEnds('beta', second.drill!);
    const audit = await call(t.url, 'GET', `/v1/audit?tenant=${ids.beta}&limit=100`, admin());
    assert.ok(
      audit.body.events.some(
        (e: { action: string; actor: string; target: string }) =>
          e.action === 'tenant.backup.drill' && e.actor === 'scheduler' && e.target.includes('(scheduled)'),
      ),
      audit.text,
    );
  });

  test('WARREN_BACKUP_DRILL_INTERVAL_MS=0: the scheduler starts no drill', async () => {
    const off = await openTestControlPlane({ ...SETTINGS, backupDrillIntervalMs: 0 });
    const a = (await new FakeAgent('drill-off', CAPACITY).start(off.url, off.joinToken)).useObjectStore(
      join(off.dataDir, 'objects'),
    );
    try {
      await createTenantWithKey(off, { name: 'solo' });
      await convergeAllRunning(off, [a]);
      const r = await call(off.url, 'POST', '/v1/tenants/solo/backups', { token: off.adminToken, body: {} });
      await until('backup completes', async () => {
        const b = await call(off.url, 'GET', `/v1/tenants/solo/backups/${r.body.id}`, {
          token: off.adminToken,
        });
        return b.body.state === 'complete';
      });
      await off.cp.backups.settled();
      const tick = await off.cp.backups.schedule.tick(Date.now() + 365 * 24 * 3600_000);
      assert.equal(tick.drill, undefined);
      assert.ok(!a.seen.some((s) => s.url.endsWith('/restore')));
    } finally {
      await a.stop();
      await off.close();
    }
  });

  test('a drill left running by a control plane that stopped is failed, and its scratch tenant deleted, at the next start', async () => {
    const id = await backupNow('alpha');
    let open!: () => void;
    agent.restoreGate = new Promise<void>((r) => (open = r));
    try {
      await call(t.url, 'POST', `/v1/tenants/alpha/backups/${id}/drill`, admin());
      await converge([agent], async () => (await scratchTenants()).length === 1 && agent.jobs.size > 0, 200);
      const [scratch] = await scratchTenants();
      const dir = t.dataDir;
      await t.close(true);
      t = await openTestControlPlane(SETTINGS, dir);
      agent.cpUrl = t.url;
      await agent.heartbeat();
      const b = await call(t.url, 'GET', `/v1/tenants/alpha/backups/${id}`, admin());
      assert.equal(b.body.drill.state, 'failed', b.text);
      assert.match(b.body.drill.error.message, /control plane stopped/);
      const s = await call(t.url, 'GET', `/v1/tenants/${scratch}`, admin());
      assert.ok(s.status === 404 || s.body.desiredState === 'absent', s.text);
    } finally {
      agent.restoreGate = undefined;
      open();
    }
    await converge([agent], async () => (await scratchTenants()).length === 0, 200);
  });
});

async function chunks(): Promise<string[]> {
  const root = join(t.dataDir, 'objects', 'chunks');
  const out: string[] = [];
  for (const d of await readdir(root).catch(() => [] as string[]))
    for (const f of await readdir(join(root, d))) out.push(`chunks/${d}/${f}`);
  return out;
}
