/**
 * The secret commands as a user runs them (node_modules/.bin/warren, the bundled CLI, a
 * separate process) against a real control plane in this process and a fake host agent:
 * `warren tenant secret set T NAME=VALUE`, `NAME=-` from stdin and `--from-file` (exact bytes),
 * `list` (names and versions, never a value), `rm`, errors for bad names; and
 * `warren rotate-master-key` refusing while the control plane runs.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { call, type FakeAgent, type TestControlPlane } from '../helpers/api.ts';
import { type CliRun, type CliStage, openCliStage, runWarren } from '../helpers/cli.ts';

let stage: CliStage | undefined;
let t: TestControlPlane;
let agent: FakeAgent;
let key = '';
let tenantId = '';
let dir = '';

before(async () => {
  stage = await openCliStage({ host: 'cli-sec-host', tenant: 'bot' });
  ({ t, agent, key, tenantId, dir } = stage);
});

after(() => stage?.close());

/** Runs `warren ARGS` with the tenant's key, optionally with stdin and more environment. */
function warren(args: string[], stdin?: Buffer, env: Record<string, string> = {}): Promise<CliRun> {
  return runWarren({ url: t.url, token: key, scratch: dir }, args, { input: stdin, env });
}

async function delivered(): Promise<Record<string, Buffer>> {
  const r = await call(t.url, 'POST', '/v1/agent/secrets', { token: agent.token, body: { tenantId } });
  assert.equal(r.status, 200, r.text);
  return Object.fromEntries(
    r.body.secrets.map((s: { name: string; value: string }) => [s.name, Buffer.from(s.value, 'base64')]),
  );
}

describe('warren tenant secret', () => {
  test('set from the command line, stdin and a file; list; rm', async () => {
    const a = await warren(['tenant', 'secret', 'set', 'bot', 'API_TOKEN=tok=with=equals']);
    assert.equal(a.status, 0, a.stderr);
    assert.match(a.stderr, /set secret API_TOKEN of bot: version 1/);
    assert.equal(a.stdout, '');

    const fromStdin = randomBytes(200);
    const b = await warren(['tenant', 'secret', 'set', 'bot', 'BINARY=-'], fromStdin);
    assert.equal(b.status, 0, b.stderr);
    const file = join(dir, 'cert.pem');
    await writeFile(file, 'line one\nline two\n', { mode: 0o600 });
    const c = await warren(['tenant', 'secret', 'set', 'bot', 'CERT', '--from-file', file, '--json']);
    assert.equal(c.status, 0, c.stderr);
    assert.equal(JSON.parse(c.stdout).version, 1);
    const again = await warren(['tenant', 'secret', 'set', 'bot', 'API_TOKEN=second']);
    assert.match(again.stderr, /version 2/);

    const got = await delivered();
    assert.equal(got.API_TOKEN!.toString(), 'second');
    assert.ok(got.BINARY!.equals(fromStdin), 'stdin bytes arrive exactly');
    assert.equal(got.CERT!.toString(), 'line one\nline two\n');

    const list = await warren(['tenant', 'secret', 'list', 'bot']);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /^NAME\s+VERSION\s+UPDATED/);
    assert.match(list.stdout, /API_TOKEN\s+2\s/);
    assert.ok(!list.stdout.includes('second') && !list.stdout.includes('line one'), 'list shows a value');
    const json = JSON.parse((await warren(['tenant', 'secret', 'list', 'bot', '--json'])).stdout);
    assert.deepEqual(
      json.secrets.map((s: { name: string }) => s.name),
      ['API_TOKEN', 'BINARY', 'CERT'],
    );

    const removed = await warren(['tenant', 'secret', 'rm', 'bot', 'CERT']);
    assert.equal(removed.status, 0, removed.stderr);
    assert.deepEqual(Object.keys(await delivered()).sort(), ['API_TOKEN', 'BINARY']);
    const gone = await warren(['tenant', 'secret', 'rm', 'bot', 'CERT']);
    assert.equal(gone.status, 1);
    assert.match(gone.stderr, /NOT_FOUND/);
  });

  test('usage errors say what is allowed and never echo the value', async () => {
    const lower = await warren(['tenant', 'secret', 'set', 'bot', 'api_token=hunter2-value']);
    assert.equal(lower.status, 2, lower.stderr);
    assert.match(lower.stderr, /upper-case letters/);
    assert.ok(!lower.stderr.includes('hunter2-value'));
    const noValue = await warren(['tenant', 'secret', 'set', 'bot', 'API_TOKEN']);
    assert.equal(noValue.status, 2);
    assert.match(noValue.stderr, /SECRET=-/);
    const both = await warren(['tenant', 'secret', 'set', 'bot', 'A=1', '--from-file', '/etc/hostname']);
    assert.equal(both.status, 2);
  });

  test('warren rotate-master-key refuses while the control plane runs', async () => {
    const r = await warren(['rotate-master-key', '--new-key-file', join(dir, 'new.key')], undefined, {
      WARREN_DATA_DIR: t.dataDir,
    });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /CONFLICT.*stop it first/s);
  });
});
