/**
 * The host agent daemon can die at any moment: VMs keep running, and a new agent
 * re-attaches to them (exec works again) without starting a second QEMU.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { qemuPidsFor } from '../helpers/daemons.ts';
import { minimalImage, REPO_ROOT, TEST_IMAGES_DIR } from '../helpers/image.ts';

function api(
  socketPath: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json' };
    const req = request({ socketPath, method, path, headers }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? parseBody(text) : undefined }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

function parseBody(text: string) {
  try {
    return JSON.parse(text);
  } catch {
    return text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
  }
}

describe('host agent restart', { timeout: 600_000 }, () => {
  let dataDir: string;
  let agent: ChildProcess | undefined;
  const socket = () => join(dataDir, 'host-agent.sock');

  async function startAgent(): Promise<ChildProcess> {
    const child = spawn(
      join(REPO_ROOT, 'scripts', 'node.sh'),
      [join(REPO_ROOT, 'apps/host-agent/src/main.ts')],
      {
        env: {
          ...process.env,
          WARREN_DATA_DIR: dataDir,
          WARREN_IMAGES_DIR: TEST_IMAGES_DIR,
          WARREN_NETWORK: 'off',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let log = '';
    child.stderr!.on('data', (c) => (log += c));
    for (let i = 0; i < 200; i++) {
      if (existsSync(socket()) && (await api(socket(), 'GET', '/v1/host').catch(() => undefined)))
        return child;
      if (child.exitCode !== null) throw new Error(`host agent exited: ${log}`);
      await sleep(100);
    }
    throw new Error(`host agent did not listen: ${log}`);
  }

  after(async () => {
    agent?.kill('SIGKILL');
    if (dataDir) {
      // Whatever the test left: destroy through a fresh agent, then kill stray QEMUs by pid.
      try {
        agent = await startAgent();
        await api(socket(), 'DELETE', '/v1/vms/vm-survivor');
      } catch {}
      agent?.kill('SIGKILL');
      for (const pid of await qemuPidsFor('vm-survivor')) process.kill(pid, 'SIGKILL');
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  test('kill -9 of the agent while a VM runs, then a restart, re-attaches without a duplicate QEMU', async () => {
    const image = await minimalImage();
    dataDir = await mkdtemp(join(tmpdir(), 'wt-agent-'));
    agent = await startAgent();
    const created = await api(socket(), 'POST', '/v1/vms', { id: 'vm-survivor', image, diskMiB: 32 });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const started = await api(socket(), 'POST', '/v1/vms/vm-survivor/start');
    assert.equal(started.body.state, 'running', JSON.stringify(started.body));
    const pid = started.body.pid as number;

    agent.kill('SIGKILL');
    await new Promise((r) => agent!.once('exit', r));
    await sleep(500);
    assert.ok(existsSync(`/proc/${pid}`), 'QEMU outlived the agent');

    agent = await startAgent();
    const status = await api(socket(), 'GET', '/v1/vms/vm-survivor');
    assert.equal(status.body.state, 'running');
    assert.equal(status.body.pid, pid);
    const exec = await api(socket(), 'POST', '/v1/vms/vm-survivor/exec', { argv: ['echo', 'still here'] });
    // A single answer instead of NDJSON lines is an error: show it.
    assert.ok(Array.isArray(exec.body), JSON.stringify(exec));
    const lines = exec.body as Record<string, any>[];
    const stdout = lines
      .filter((l) => l.stdout)
      .map((l) => Buffer.from(l.stdout, 'base64').toString())
      .join('');
    assert.equal(stdout, 'still here\n');
    assert.deepEqual(lines.at(-1)?.exit?.exitCode, 0);
    assert.deepEqual(await qemuPidsFor('vm-survivor'), [pid]);

    // Starting it again is a no-op, not a second QEMU.
    await api(socket(), 'POST', '/v1/vms/vm-survivor/start');
    assert.deepEqual(await qemuPidsFor('vm-survivor'), [pid]);

    const del = await api(socket(), 'DELETE', '/v1/vms/vm-survivor');
    assert.equal(del.status, 204);
    assert.deepEqual(await qemuPidsFor('vm-survivor'), []);
    const missing = await api(socket(), 'GET', '/v1/vms/vm-survivor');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'VM_NOT_FOUND');
  });
});
