/**
 * The `warren` command as a user runs it (node_modules/.bin/warren, the bundled CLI): image
 * build caching and `vm run` through a real host agent's local API, the error when no agent
 * runs, and `warren up` (apps/platform) running both daemons until SIGTERM.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { minimalImage, REPO_ROOT, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const WARREN = join(REPO_ROOT, 'node_modules', '.bin', 'warren');

/** Sends SIGTERM and waits for the exit; SIGKILL if it takes longer than `ms`. */
async function stop(child: ChildProcess | undefined, ms = 30_000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  await exited;
  clearTimeout(timer);
}

describe('warren CLI', { timeout: 600_000 }, () => {
  let dataDir: string;
  let agent: ChildProcess | undefined;
  const env = () => ({
    ...process.env,
    WARREN_DATA_DIR: dataDir,
    WARREN_IMAGES_DIR: TEST_IMAGES_DIR,
    WARREN_NETWORK: 'off',
  });
  before(async () => {
    await minimalImage();
    dataDir = await mkdtemp(join(tmpdir(), 'wt-cli-'));
  });
  after(async () => {
    await stop(agent);
    await rm(dataDir, { recursive: true, force: true });
  });

  const warren = (...args: string[]) =>
    spawnSync(WARREN, args, { env: env(), encoding: 'utf8', timeout: 300_000 });

  test('without a host agent, vm run and image list say which socket and how to start one', () => {
    for (const args of [
      ['image', 'list'],
      ['vm', 'run', '--image', 'sha256:0000000000', '--', 'true'],
    ]) {
      const r = warren(...args);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /HOST_AGENT_UNREACHABLE/);
      assert.ok(r.stderr.includes(join(dataDir, 'host-agent.sock')), r.stderr);
      assert.match(r.stderr, /warren up/);
    }
  });

  test('with the agent running: image build of a cached recipe is a cache hit and prints the image id last', async () => {
    // A standalone agent (no control plane), as on a machine that runs only VMs.
    agent = spawn(WARREN, ['host-agent'], { env: env(), stdio: ['ignore', 'ignore', 'inherit'] });
    await until('the host agent socket', async () => existsSync(join(dataDir, 'host-agent.sock')));
    const started = Date.now();
    const r = warren('image', 'build', '--profile', 'minimal');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /cache hit/);
    assert.match(r.stdout.trim().split('\n').at(-1)!, /^sha256:[0-9a-f]{64}$/);
    assert.ok(Date.now() - started < 30_000);
    const list = JSON.parse(warren('image', 'list', '--json').stdout);
    assert.ok(list.images.some((i: { id: string }) => i.id === r.stdout.trim()));
  });

  test('vm run prints the guest kernel release and passes exit codes through; no VM is left', async () => {
    const id = (await minimalImage()).slice(0, 19);
    const uname = warren('vm', 'run', '--image', id, '--', 'uname', '-r');
    assert.equal(uname.status, 0, uname.stderr);
    assert.match(uname.stdout.trim(), /-cloud-amd64$/);
    assert.notEqual(uname.stdout.trim(), (await import('node:os')).release());
    const seven = warren('vm', 'run', '--image', id, '--', 'sh', '-c', 'exit 7');
    assert.equal(seven.status, 7);
    assert.deepEqual(await readdir(join(dataDir, 'vms')), []);
  });

  test('bad input gets a clear error and a non-zero exit', () => {
    const r = warren('vm', 'run', '--image', 'not-an-id', '--', 'true');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /INVALID_ARGUMENT/);
    assert.match(r.stderr, /fix:/);
  });

  test('warren up --profile finds (or builds) that image, then runs both daemons until SIGTERM', async () => {
    await stop(agent);
    const upDir = await mkdtemp(join(tmpdir(), 'wt-up-'));
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const upEnv = {
      ...env(),
      WARREN_DATA_DIR: upDir,
      WARREN_API_PORT: String(port),
      WARREN_AGENT_LISTEN: '127.0.0.1:0',
      WARREN_HOST_NAME: 'up-host',
    };
    const up = spawn(WARREN, ['up', '--profile', 'minimal', '--json'], {
      env: upEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    up.stdout!.on('data', (b) => (stdout += b));
    up.stderr!.on('data', (b) => (stderr = (stderr + b).slice(-8000)));
    try {
      await until('warren up prints its URL', async () => stdout.includes('"url"'), 120_000);
      assert.equal(JSON.parse(stdout).url, `http://127.0.0.1:${port}`);
      // The test image's recipe is built already: a cache hit, named before the daemons start.
      assert.match(stderr, /default image \(minimal\) sha256:[0-9a-f]{64} \(cached\)/);
      // The CLI finds the local control plane and admin token by itself, and the agent joined.
      const cli = (...args: string[]) =>
        new Promise<{ code: number; out: string }>((resolve) =>
          execFile(WARREN, args, { env: { ...upEnv, WARREN_API_URL: '', WARREN_TOKEN: '' } }, (e, out) =>
            resolve({ code: e ? Number(e.code ?? 1) : 0, out }),
          ),
        );
      await until(
        'the host agent joins',
        async () => {
          const hosts = await cli('host', 'list', '--json');
          return (
            hosts.code === 0 &&
            JSON.parse(hosts.out).hosts.some((h: { name: string }) => h.name === 'up-host')
          );
        },
        120_000,
      );
      assert.equal((await cli('tenant', 'list')).code, 0);
      const exited = new Promise<number | null>((r) => up.once('exit', (code) => r(code)));
      up.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
      assert.match(stderr, /stopping the host agent and the control plane/);
      // Both daemons are gone: nothing listens on the API port, the agent's socket is removed.
      await assert.rejects(fetch(`http://127.0.0.1:${port}/v1/health`));
      assert.equal(existsSync(join(upDir, 'host-agent.pid')), false);
    } finally {
      await stop(up);
      await rm(upDir, { recursive: true, force: true });
    }
  });
});
