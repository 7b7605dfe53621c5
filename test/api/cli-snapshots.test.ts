/**
 * The snapshot and session commands as a user runs them (node_modules/.bin/warren, the bundled
 * CLI, a separate process) against a real control plane in this process and a fake host agent:
 * the command shapes issue 11 names, `tenant run` streaming output, listing changed files,
 * ending the session (revert, or keep) and passing the exit code through, and Ctrl-C in the
 * middle of a command still reverting.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { vmIdOfTenant } from '@warren/protocol';
import { call, type FakeAgent, type TestControlPlane } from '../helpers/api.ts';
import { type CliRun, type CliStage, openCliStage, runWarren } from '../helpers/cli.ts';
import { until } from '../helpers/until.ts';

let stage: CliStage | undefined;
let t: TestControlPlane;
let agent: FakeAgent;
let key = '';
let vm = '';
let dir = '';

before(async () => {
  stage = await openCliStage({ host: 'cli-host', tenant: 'yolo' });
  ({ t, agent, key, dir } = stage);
  vm = vmIdOfTenant(stage.tenantId);
});

after(() => stage?.close());

/** Runs `warren ARGS` with the tenant's key. */
function warren(args: string[], onSpawn?: (pid: number) => void): Promise<CliRun> {
  return runWarren({ url: t.url, token: key, scratch: dir }, args, { onSpawn });
}

async function sessions(): Promise<{ id: string; state: string; outcome: string | null }[]> {
  return (await call(t.url, 'GET', '/v1/tenants/yolo/sessions', { token: key })).body.sessions;
}

describe('warren tenant snapshot', () => {
  test('create [--name], list [--json], revert, delete', async () => {
    const named = await warren(['tenant', 'snapshot', 'create', 'yolo', '--name', 'clean']);
    assert.equal(named.status, 0, named.stderr);
    assert.equal(named.stdout, 'clean\n');
    const unnamed = await warren(['tenant', 'snapshot', 'create', 'yolo']);
    assert.equal(unnamed.status, 0, unnamed.stderr);
    const auto = unnamed.stdout.trim();
    assert.match(auto, /^[a-z0-9-]+$/);

    const json = await warren(['tenant', 'snapshot', 'list', 'yolo', '--json']);
    assert.equal(json.status, 0, json.stderr);
    assert.deepEqual(
      JSON.parse(json.stdout)
        .snapshots.map((s: { name: string }) => s.name)
        .sort(),
      [auto, 'clean'].sort(),
    );
    const human = await warren(['tenant', 'snapshot', 'list', 'yolo']);
    assert.match(human.stdout, /^NAME\s+CREATED\s+PARENT\s+SIZE\s+MEMORY\n/);
    assert.match(human.stdout, /\nclean\s+\d+s ago\s+\S+\s+64 MiB\s+mapped\n/);

    const reverts = agent.reverts.length;
    const revert = await warren(['tenant', 'snapshot', 'revert', 'yolo', 'clean']);
    assert.equal(revert.status, 0, revert.stderr);
    assert.match(revert.stderr, /reverted yolo to clean/);
    assert.deepEqual(agent.reverts.slice(reverts), [{ vmId: vm, name: 'clean' }]);

    for (const name of ['clean', auto]) {
      const del = await warren(['tenant', 'snapshot', 'delete', 'yolo', name]);
      assert.equal(del.status, 0, del.stderr);
    }
    assert.deepEqual(JSON.parse((await warren(['tenant', 'snapshot', 'list', 'yolo', '--json'])).stdout), {
      snapshots: [],
    });

    const missing = await warren(['tenant', 'snapshot', 'revert', 'yolo', 'gone']);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /NOT_FOUND/);
    const usage = await warren(['tenant', 'snapshot', 'revert', 'yolo']);
    assert.equal(usage.status, 2);
  });
});

describe('warren tenant run', () => {
  test('secrets in, output streamed, changed files listed, reverted, exit code passed through', async () => {
    const token = join(dir, 'token');
    const apiKey = join(dir, 'api-key');
    await writeFile(token, 'file-secret-value');
    await writeFile(apiKey, 'env-secret-value\n');
    agent.execExitCode = 3;
    agent.changes = [
      { disk: 'root', path: '/etc', change: 'deleted', type: 'directory' },
      { disk: 'data', path: '/workspace/out.txt', change: 'added', type: 'file' },
    ];
    const reverts = agent.reverts.length;
    try {
      const r = await warren([
        'tenant',
        'run',
        'yolo',
        '--secret',
        `token=@${token}`,
        '--secret-env',
        `API_KEY=@${apiKey}`,
        '--',
        'rm',
        '-rf',
        '--no-preserve-root',
        '/',
      ]);
      assert.equal(r.status, 3, r.stderr);
      assert.equal(r.stdout, 'fake\n');
      assert.match(r.stderr, /fake-err\n/);
      assert.match(r.stderr, /changed 2 files:\n {2}D root \/etc\/\n {2}A data \/workspace\/out\.txt\n/);
      assert.match(r.stderr, /ended: reverted\n$/);
    } finally {
      agent.execExitCode = 0;
    }
    const put = agent.seen.find((s) => s.method === 'PUT' && s.url === `/v1/vms/${vm}/credentials`);
    assert.deepEqual(JSON.parse(put!.body), {
      files: { token: 'file-secret-value' },
      env: { API_KEY: 'env-secret-value' },
    });
    const exec = agent.seen.findLast((s) => s.url.endsWith('/exec'));
    assert.deepEqual(JSON.parse(exec!.body).argv, ['rm', '-rf', '--no-preserve-root', '/']);
    assert.equal(agent.credentials.has(vm), false);
    assert.deepEqual(agent.reverts.slice(reverts), [{ vmId: vm, name: 'session-base' }]);
    const [last] = await sessions();
    assert.equal(last!.state, 'ended');
    assert.equal(last!.outcome, 'reverted');
  });

  test('--keep keeps the VM; --quiet leaves stderr to the command; --json ends with the result', async () => {
    agent.changes = [];
    const reverts = agent.reverts.length;
    const kept = await warren(['tenant', 'run', 'yolo', '--keep', '--quiet', '--', 'true']);
    assert.equal(kept.status, 0, kept.stderr);
    assert.equal(kept.stderr, 'fake-err\n');
    assert.equal(agent.reverts.length, reverts);
    assert.equal((await sessions())[0]!.outcome, 'kept');

    const json = await warren(['tenant', 'run', 'yolo', '--json', '--', 'true']);
    assert.equal(json.status, 0, json.stderr);
    const lines = json.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(lines[0], { stdout: Buffer.from('fake\n').toString('base64') });
    const result = lines.at(-1);
    assert.equal(result.exit.exitCode, 0);
    assert.equal(result.session.outcome, 'reverted');
    assert.deepEqual(result.changes, { since: 'session-base', changes: [], truncated: false });
  });

  test('Ctrl-C during the command still ends the session and reverts; exit 130', async () => {
    let release!: () => void;
    agent.gate = new Promise<void>((r) => (release = r));
    const reverts = agent.reverts.length;
    try {
      let pid = 0;
      const running = warren(['tenant', 'run', 'yolo', '--keep', '--', 'sleep', '1000'], (p) => (pid = p));
      await until('the command runs in the guest', () => agent.streaming === 1, 30_000, 20);
      process.kill(pid, 'SIGINT');
      const r = await running;
      assert.equal(r.status, 130, r.stderr);
      assert.match(r.stderr, /interrupted; reverting session ses_/);
    } finally {
      release();
      agent.gate = undefined;
    }
    // Interrupted means reverted, even with --keep: nobody looked at what the command did.
    assert.deepEqual(agent.reverts.slice(reverts), [{ vmId: vm, name: 'session-base' }]);
    const [last] = await sessions();
    assert.equal(last!.state, 'ended');
    assert.equal(last!.outcome, 'reverted');
    assert.equal(agent.credentials.has(vm), false);
  });

  test('a secret given on the command line is refused without echoing it', async () => {
    const r = await warren(['tenant', 'run', 'yolo', '--secret', 'TOKEN=hunter2-value', '--', 'true']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /INVALID_ARGUMENT: --secret takes KEY=@FILE/);
    assert.ok(!r.stderr.includes('hunter2-value'), r.stderr);
    const bare = await warren(['tenant', 'run', 'yolo', '--secret', 'hunter2-value', '--', 'true']);
    assert.equal(bare.status, 2);
    assert.ok(!bare.stderr.includes('hunter2-value'), bare.stderr);
  });
});

describe('warren tenant session', () => {
  test('start, list, show, changes, end', async () => {
    const secret = join(dir, 's');
    await writeFile(secret, 'abc');
    const started = await warren([
      'tenant',
      'session',
      'start',
      'yolo',
      '--secret',
      `s=@${secret}`,
      '--max-duration',
      '600',
    ]);
    assert.equal(started.status, 0, started.stderr);
    const id = started.stdout.trim();
    assert.match(id, /^ses_[0-9a-f]{16}$/);

    const list = await warren(['tenant', 'session', 'list', 'yolo']);
    assert.match(list.stdout, /^ID\s+STATE\s+OUTCOME\s+STARTED\s+EXPIRES\s+ERROR\n/);
    assert.match(list.stdout, new RegExp(`\\n${id}\\s+active\\s+-`));
    const show = await warren(['tenant', 'session', 'show', 'yolo', id, '--json']);
    const s = JSON.parse(show.stdout);
    assert.equal(Date.parse(s.expiresAt) - Date.parse(s.createdAt), 600_000);

    agent.changes = [{ disk: 'data', path: '/workspace/a', change: 'modified', type: 'file' }];
    const changes = await warren(['tenant', 'session', 'changes', 'yolo', id]);
    assert.equal(changes.status, 0, changes.stderr);
    assert.equal(changes.stdout, 'M data /workspace/a\n');

    const end = await warren(['tenant', 'session', 'end', 'yolo', id, '--keep', '--json']);
    assert.equal(end.status, 0, end.stderr);
    assert.equal(JSON.parse(end.stdout).outcome, 'kept');
  });
});
