/**
 * The backup commands as a user runs them (node_modules/.bin/warren, the bundled CLI, a separate
 * process) against a real control plane in this process and a fake host agent that runs jobs
 * with the real backup library: the command shapes issue 12 names (`tenant backup`, `tenant
 * backups --json` with ids, `tenant restore [--new]`, `tenant backup verify`), progress on
 * stderr, `--no-wait`, show, delete, policy, and verify exiting non-zero naming the bad object.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { vmIdOfTenant } from '@warren/protocol';
import type { FakeAgent, TestControlPlane } from '../helpers/api.ts';
import { type CliRun, type CliStage, openCliStage, runWarren } from '../helpers/cli.ts';

let stage: CliStage | undefined;
let t: TestControlPlane;
let agent: FakeAgent;
let key = '';
let vm = '';
let dir = '';

before(async () => {
  stage = await openCliStage({
    host: 'cli-bk-host',
    tenant: 'keeper',
    settings: { backupPollMs: 20, backupScheduleMs: 0, backupGcIntervalMs: 0, backupDrillIntervalMs: 0 },
    heartbeatMs: 50,
  });
  ({ t, agent, key, dir } = stage);
  agent.useObjectStore(join(t.dataDir, 'objects'));
  vm = vmIdOfTenant(stage.tenantId);
});

after(() => stage?.close());

/** Runs `warren ARGS` with the tenant's key unless told otherwise. */
function warren(args: string[], token = key): Promise<CliRun> {
  return runWarren({ url: t.url, token, scratch: dir }, args);
}

async function chunkFiles(): Promise<string[]> {
  const root = join(t.dataDir, 'objects', 'chunks');
  const out: string[] = [];
  for (const d of await readdir(root))
    for (const f of await readdir(join(root, d))) out.push(`chunks/${d}/${f}`);
  return out.sort();
}

describe('warren tenant backup|backups|restore', () => {
  let first = '';

  test('backup waits with progress on stderr and prints the id; backups --json lists it with its id', async () => {
    const r = await warren(['tenant', 'backup', 'keeper']);
    assert.equal(r.status, 0, r.stderr);
    first = r.stdout.trim();
    assert.match(first, /^bak_[0-9a-f]{16}$/);
    assert.match(r.stderr, new RegExp(`backing up keeper \\(${first}\\): `));
    assert.match(r.stderr, new RegExp(`backup ${first} of keeper: full, 3\\.0 MiB of volumes`));
    const list = await warren(['tenant', 'backups', 'keeper', '--json']);
    assert.equal(list.status, 0, list.stderr);
    const parsed = JSON.parse(list.stdout);
    assert.deepEqual(
      parsed.backups.map((b: { id: string; state: string }) => [b.id, b.state]),
      [[first, 'complete']],
    );
    const human = await warren(['tenant', 'backups', 'keeper']);
    assert.match(human.stdout, /^ID\s+STATE\s+TAKEN/);
    assert.match(human.stdout, new RegExp(`${first}\\s+complete`));
    const show = await warren(['tenant', 'backup', 'show', 'keeper', first]);
    assert.equal(show.status, 0, show.stderr);
    assert.match(show.stdout, /state:\s+complete/);
  });

  test('--no-wait returns while it runs; --include-root is passed on', async () => {
    let open!: () => void;
    agent.backupGate = new Promise<void>((r) => (open = r));
    try {
      const r = await warren(['tenant', 'backup', 'keeper', '--no-wait', '--include-root', '--json']);
      assert.equal(r.status, 0, r.stderr);
      const b = JSON.parse(r.stdout);
      assert.equal(b.state, 'running');
      assert.equal(b.includeRoot, true);
      const busy = await warren(['tenant', 'backup', 'keeper']);
      assert.equal(busy.status, 1);
      assert.match(busy.stderr, /CONFLICT/);
    } finally {
      agent.backupGate = undefined;
      open();
    }
  });

  test('verify: ok exits 0; a flipped byte exits 1 naming the backup and the object', async () => {
    const ok = await warren(['tenant', 'backup', 'verify', 'keeper', first]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stderr, /: ok, \d+ chunks/);
    const chunk = (await chunkFiles())[0]!;
    const path = join(t.dataDir, 'objects', chunk);
    const original = await readFile(path);
    const flipped = Buffer.from(original);
    flipped[flipped.length - 1]! ^= 0x80;
    await writeFile(path, flipped);
    try {
      const bad = await warren(['tenant', 'backup', 'verify', 'keeper', first]);
      assert.equal(bad.status, 1, bad.stderr);
      assert.match(bad.stderr, new RegExp(`${chunk}: .*${first}`));
      assert.match(
        bad.stderr,
        new RegExp(
          `BACKUP_CORRUPT: backup ${first} of keeper failed verification: 1 bad object\\(s\\), first ${chunk}`,
        ),
      );
    } finally {
      await writeFile(path, original);
    }
  });

  test('restore into the tenant and into a new one (--new, admin) wait with progress', async () => {
    const original = Buffer.from(agent.volumeOf(vm).data);
    agent.volumeOf(vm).data.fill(1, 0, 100);
    const r = await warren(['tenant', 'restore', 'keeper', first]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`restoring ${first} into keeper: `));
    assert.match(r.stderr, new RegExp(`restored backup ${first} into keeper`));
    assert.ok(agent.volumeOf(vm).data.equals(original));
    const denied = await warren(['tenant', 'restore', 'keeper', first, '--new', 'keeper-copy']);
    assert.equal(denied.status, 1);
    assert.match(denied.stderr, /FORBIDDEN/);
    const clone = await warren(
      ['tenant', 'restore', 'keeper', first, '--new', 'keeper-copy', '--json'],
      t.adminToken,
    );
    assert.equal(clone.status, 0, clone.stderr);
    const done = JSON.parse(clone.stdout);
    assert.equal(done.tenant.name, 'keeper-copy');
    assert.equal(done.operation.status, 'succeeded');
    assert.ok(agent.volumeOf(vmIdOfTenant(done.tenant.id)).data.equals(original));
  });

  test('policy shows and sets; delete removes a backup', async () => {
    const shown = await warren(['tenant', 'backup', 'policy', 'keeper']);
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /never \(manual backups only\); keep last 1, hourly 24, daily 7, weekly 4/);
    const set = await warren([
      'tenant',
      'backup',
      'policy',
      'keeper',
      '--every',
      '1h',
      '--keep-daily',
      '3',
      '--json',
    ]);
    assert.equal(set.status, 0, set.stderr);
    assert.deepEqual(JSON.parse(set.stdout), {
      everyMinutes: 60,
      keepLast: 1,
      keepHourly: 24,
      keepDaily: 3,
      keepWeekly: 4,
    });
    const bad = await warren(['tenant', 'backup', 'policy', 'keeper', '--every', 'soon']);
    assert.equal(bad.status, 2);
    const del = await warren(['tenant', 'backup', 'delete', 'keeper', first]);
    assert.equal(del.status, 0, del.stderr);
    const list = JSON.parse((await warren(['tenant', 'backups', 'keeper', '--json'])).stdout);
    assert.ok(!list.backups.some((b: { id: string }) => b.id === first));
  });
});
