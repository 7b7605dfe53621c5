/**
 * The host agent daemon (apps/host-agent/src/main.ts, as a process) at start: it refuses to run
 * VMs without resource limits unless told so (finding 11), and it leaves nothing of a tenant
 * readable by other local users (finding 7). No VM boots here (needs root: cgroups, chmod,
 * another uid), so the VM lock is not needed.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { call, openTestControlPlane } from '../helpers/api.ts';
import { REPO_ROOT } from '../helpers/image.ts';
import { logMessages } from '../helpers/logs.ts';
import { until } from '../helpers/until.ts';

const MAIN = join(REPO_ROOT, 'apps/host-agent/src/main.ts');
// World-traversable, like /var/lib: what protects a data directory must be its own modes.
const parent = await mkdtemp(join(tmpdir(), 'wt-start-'));
await chmod(parent, 0o755);
const agents: ChildProcess[] = [];
after(async () => {
  for (const a of agents) if (a.exitCode === null && a.signalCode === null) a.kill('SIGKILL');
  await rm(parent, { recursive: true, force: true });
});

function startAgent(
  dataDir: string,
  env: Record<string, string>,
): { agent: ChildProcess; stderr: () => string } {
  let stderr = '';
  const agent = spawn(process.execPath, [MAIN], {
    env: { ...process.env, WARREN_DATA_DIR: dataDir, WARREN_NETWORK: 'off', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  agents.push(agent);
  agent.stderr!.on('data', (b) => (stderr += b));
  return { agent, stderr: () => stderr };
}

function exited(agent: ChildProcess, timeoutMs = 30_000): Promise<number | null> {
  if (agent.exitCode !== null) return Promise.resolve(agent.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent still runs after ${timeoutMs} ms`)), timeoutMs);
    agent.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

async function stopAgent(agent: ChildProcess): Promise<void> {
  if (agent.exitCode !== null || agent.signalCode !== null) return;
  agent.kill('SIGTERM');
  await exited(agent);
}

function localGet(socketPath: string, path: string): Promise<{ cgroups: { state: string } }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET' }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(JSON.parse(body)));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('without cgroups (finding 11)', () => {
  test('the agent refuses to start, and says how to fix it', async () => {
    const dataDir = join(parent, 'no-cgroups');
    const emptyRoot = await mkdtemp(join(parent, 'cgroot-'));
    const { agent, stderr } = startAgent(dataDir, { WARREN_CGROUP_ROOT: emptyRoot });
    const code = await exited(agent);
    assert.equal(code, 1, stderr());
    assert.match(logMessages(stderr()), /CGROUPS_UNAVAILABLE: no cgroup v1 or v2 hierarchy at/);
    assert.match(logMessages(stderr()), /WARREN_CGROUPS=off/);
    assert.equal(existsSync(join(dataDir, 'host-agent.sock')), false, 'it must not serve');
  });

  test('with WARREN_CGROUPS=off it starts, and reports `off` locally and to the control plane', async () => {
    const dataDir = join(parent, 'cgroups-off');
    const emptyRoot = await mkdtemp(join(parent, 'cgroot-'));
    const cp = await openTestControlPlane();
    const { agent, stderr } = startAgent(dataDir, {
      WARREN_CGROUPS: 'off',
      WARREN_CGROUP_ROOT: emptyRoot,
      WARREN_CONTROL_PLANE_URL: cp.url,
      WARREN_JOIN_TOKEN: cp.joinToken,
      WARREN_HOST_NAME: 'no-limits',
      WARREN_AGENT_LISTEN: '127.0.0.1:0',
      WARREN_HEARTBEAT_MS: '200',
    });
    try {
      const socket = join(dataDir, 'host-agent.sock');
      await until(`the agent listens (${stderr()})`, () => existsSync(socket), 30_000);
      assert.equal((await localGet(socket, '/v1/host')).cgroups.state, 'off');
      const host = await until('the control plane shows the host', async () => {
        const res = await call(cp.url, 'GET', '/v1/hosts', { token: cp.adminToken });
        return res.body?.hosts?.find((h: { name: string; cgroups: string }) => h.cgroups !== 'unknown');
      });
      assert.equal(host.name, 'no-limits');
      assert.equal(host.cgroups, 'off');
      assert.equal(host.vmm, 'qemu', 'the heartbeat carries the VMM driver (WARREN_VMM defaults to qemu)');
      assert.match(logMessages(stderr()), /resource limits: OFF/);
    } finally {
      await stopAgent(agent);
      await cp.close();
    }
  });
});

describe('file modes (finding 7)', () => {
  test('another local user cannot read tenant disks or the agent credentials', async () => {
    // What an agent or an image build under umask 022 left behind.
    const dataDir = join(parent, 'data');
    const vmDir = join(dataDir, 'vms', 'ten-0123456789abcdef0123456789abcdef');
    await mkdir(vmDir, { recursive: true, mode: 0o755 });
    await chmod(dataDir, 0o755);
    await chmod(join(dataDir, 'vms'), 0o755);
    const secrets = [
      join(vmDir, 'data.img'),
      join(vmDir, 'root.qcow2'),
      join(vmDir, 'vm.json'),
      join(dataDir, 'control-plane.json'),
    ];
    for (const f of secrets) await writeFile(f, 'tenant secret\n', { mode: 0o644 });
    // A VM's jail keeps the modes the jail gives it: its root must stay traversable for QEMU's uid.
    const jail = join(vmDir, 'jail');
    await mkdir(jail, { mode: 0o755 });
    await chmod(jail, 0o755);
    await mkdir(join(dataDir, 'images'), { mode: 0o755 });
    await writeFile(join(dataDir, 'images', 'rootfs.img'), 'x', { mode: 0o644 });
    const asNobody = (file: string) =>
      spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'cat', file], {
        encoding: 'utf8',
      });
    // The attack works on what was left behind, before the agent starts.
    assert.equal(asNobody(secrets[0]!).stdout, 'tenant secret\n');

    const { agent, stderr } = startAgent(dataDir, { WARREN_CGROUPS: 'off' });
    try {
      const socket = join(dataDir, 'host-agent.sock');
      await until(`the agent listens (${stderr()})`, () => existsSync(socket), 30_000);
      for (const f of secrets) {
        const r = asNobody(f);
        assert.notEqual(r.status, 0, `nobody read ${f}`);
        assert.match(r.stderr, /Permission denied/);
      }
      const walked = [
        dataDir,
        join(dataDir, 'vms'),
        vmDir,
        join(dataDir, 'host-agent.pid'),
        socket,
        ...secrets,
      ];
      for (const f of walked) {
        const mode = (await stat(f)).mode & 0o777;
        assert.equal(mode & 0o077, 0, `${f} has mode ${mode.toString(8)}`);
      }
      assert.equal((await stat(jail)).mode & 0o777, 0o755);
      // Platform images are no tenant's: the store's modes stay (a jailed QEMU reads its blobs).
      assert.equal((await stat(join(dataDir, 'images', 'rootfs.img'))).mode & 0o777, 0o644);
      // What it makes from now on, and what it starts, is private too.
      assert.match(readFileSync(`/proc/${agent.pid}/status`, 'utf8'), /^Umask:\s+0077$/m);
    } finally {
      await stopAgent(agent);
    }
  });
});
