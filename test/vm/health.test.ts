/**
 * Health checks and failed starts (issue 13): a guest whose agent stops answering, or whose
 * kernel stops running its tasks, is reported `unhealthy` and restarted; a guest agent killed
 * and respawned by the guest's init within the grace is only logged; a corrupt image and a
 * full disk end `failed` with their codes, nothing half-made left, and the agent gives up
 * after WARREN_START_MAX_ATTEMPTS saying so. Real VMs and a real host agent; the control
 * plane is the fake (outside the unit under test).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp as copyDir, mkdir, mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import {
  type ControlLink,
  connectControlPlane,
  type Host,
  type HostAgentConfig,
  loadConfig,
  openHost,
} from '@warren/host-agent';
import type { DesiredTenant, HeartbeatRequest } from '@warren/protocol';
import { desiredTenant, FakeControlPlane } from '../helpers/fake-control-plane.ts';
import { collect } from '../helpers/host.ts';
import { minimalImage, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const run = promisify(execFile);

/** The guest agent is the only process running the guest's node binary. */
const AGENT_PIDS = `for p in /proc/[0-9]*; do [ "$(readlink $p/exe)" = /usr/lib/warren/node ] && echo \${p#/proc/}; done; true`;

const vmOf = (r: HeartbeatRequest, t: DesiredTenant) => r.vms.find((v) => v.tenantId === t.tenantId);

interface Agent {
  host: Host;
  link: ControlLink;
  cp: FakeControlPlane;
  logs: string[];
  close(): Promise<void>;
}

/** A host agent on `dataDir` joined to a fresh fake control plane, with short health and retry settings. */
async function startAgent(dataDir: string, overrides: Partial<HostAgentConfig> = {}): Promise<Agent> {
  const cp = await FakeControlPlane.start();
  const logs: string[] = [];
  const host = await openHost(
    loadConfig(
      {},
      {
        dataDir,
        imagesDir: TEST_IMAGES_DIR,
        bootTimeoutMs: 90_000,
        controlPlaneUrl: cp.url,
        joinToken: cp.joinToken,
        agentListen: '127.0.0.1:0',
        network: 'off',
        heartbeatMs: 300,
        capacityDiskMiB: 10_240,
        healthIntervalMs: 1000,
        healthTimeoutMs: 2000,
        healthFailures: 2,
        healthGraceMs: 15_000,
        startMaxAttempts: 3,
        ...overrides,
      },
    ),
  );
  const link = await connectControlPlane(host, (m) => logs.push(m), {
    retryInitialMs: 500,
    retryMaxMs: 2000,
  });
  await cp.waitForReport('the first heartbeat', () => true, 15_000);
  return {
    host,
    link,
    cp,
    logs,
    async close() {
      await link.close();
      await cp.close();
      for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
      host.vms.close();
    },
  };
}

async function shell(agent: Agent, vmId: string, script: string): Promise<string> {
  const guest = await agent.host.vms.guest(vmId);
  const r = await collect((o) => guest.exec({ argv: ['sh', '-c', script], timeoutMs: 30_000 }, o));
  assert.equal((r.exit as { exitCode: number }).exitCode, 0, r.stderr);
  return r.stdout;
}

/** Everything under `dir`, relative, sorted: to show a failed step left nothing behind. */
async function tree(dir: string): Promise<string[]> {
  return ((await readdir(dir, { recursive: true }).catch(() => [])) as string[]).sort();
}

/** cgroup directories named after the VM, anywhere in the first levels of the hierarchy. */
async function cgroupsOf(vmId: string): Promise<string> {
  const { stdout } = await run('find', ['/sys/fs/cgroup', '-maxdepth', '4', '-name', `*${vmId}*`]).catch(
    () => ({
      stdout: '',
    }),
  );
  return stdout.trim();
}

describe('health checks: unhealthy guests are detected and restarted', { timeout: 400_000 }, () => {
  let dataDir: string;
  let agent: Agent | undefined;
  let t: DesiredTenant;

  before(async () => {
    const image = await minimalImage();
    dataDir = await mkdtemp(join(tmpdir(), 'wh-'));
    agent = await startAgent(dataDir);
    t = desiredTenant(image, 'running', 1);
    agent.cp.set(t);
    agent.link.reconciler.wake();
    await agent.cp.waitForReport('the tenant runs', (r) => vmOf(r, t)?.state === 'running', 120_000);
    await shell(agent, t.vmId, 'echo kept > /workspace/kept && sync');
  });

  after(async () => {
    await agent?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  // Killed at once after the VM got ready: the host must know the agent's start time from
  // the start itself, not from a first health check (which this kill used to beat).
  test('a guest agent killed and respawned by init within the grace is logged, not restarted', async () => {
    const a = agent!;
    const { pid } = await a.host.vms.get(t.vmId);
    const before = (await shell(a, t.vmId, AGENT_PIDS)).trim();
    assert.match(before, /^\d+$/, 'one guest agent process');
    // The kill ends the exec's own agent: its answer never comes.
    void shell(a, t.vmId, `kill -9 ${before}`).catch(() => {});
    await until(
      'the respawned agent answers a health check',
      () => a.logs.some((l) => l.includes(t.vmId) && /answers again.*restarted inside the guest/.test(l)),
      60_000,
    );
    assert.equal((await a.host.vms.get(t.vmId)).pid, pid, 'same QEMU: no restart');
    assert.ok(!a.logs.some((l) => l.includes(`VM ${t.vmId}: restarting it`)));
    const after = (await shell(a, t.vmId, AGENT_PIDS)).trim();
    assert.notEqual(after, before);
  });

  test('a guest agent that stays stopped (kill -STOP) is reported unhealthy, then the VM is restarted', async () => {
    const a = agent!;
    const { pid } = await a.host.vms.get(t.vmId);
    const agentPid = (await shell(a, t.vmId, AGENT_PIDS)).trim();
    const stoppedAt = Date.now();
    void shell(a, t.vmId, `kill -STOP ${agentPid}`).catch(() => {});
    const sick = await a.cp.waitForReport('unhealthy', (r) => vmOf(r, t)?.state === 'unhealthy', 30_000);
    const detectedMs = Date.now() - stoppedAt;
    const error = vmOf(sick, t)!.error!;
    assert.equal(error.code, 'GUEST_UNHEALTHY');
    assert.match(error.message, /no answer from its guest agent for \d+ s/);
    assert.ok(error.message.includes(a.host.vms.consoleLog(t.vmId)), error.message);
    await a.cp.waitForReport('running again', (r) => vmOf(r, t)?.state === 'running', 150_000);
    const restartedMs = Date.now() - stoppedAt;
    const now = await a.host.vms.get(t.vmId);
    assert.notEqual(now.pid, pid, 'a new QEMU');
    assert.equal(await shell(a, t.vmId, 'cat /workspace/kept'), 'kept\n');
    assert.ok(a.logs.some((l) => l.includes(`VM ${t.vmId}: restarting it`)));
    process.stdout.write(
      `# agent stopped: unhealthy after ${detectedMs} ms, running again after ${restartedMs} ms\n`,
    );
  });

  test('a guest kernel that stops running its tasks (suspend-to-idle, QEMU alive) is detected and restarted', async () => {
    const a = agent!;
    const { pid } = await a.host.vms.get(t.vmId);
    // `freeze` suspends the guest to idle: every task frozen, devices suspended, and nothing on
    // the channel wakes it. QEMU runs on and accepts connections; the guest answers none, as a
    // hung kernel. The exec that asks for it never returns.
    void shell(a, t.vmId, 'echo freeze > /sys/power/state').catch(() => {});
    const frozenAt = Date.now();
    const sick = await a.cp.waitForReport('unhealthy', (r) => vmOf(r, t)?.state === 'unhealthy', 30_000);
    assert.equal(vmOf(sick, t)!.error?.code, 'GUEST_UNHEALTHY');
    assert.ok(existsSync(`/proc/${pid}`), 'QEMU itself still runs');
    await a.cp.waitForReport('running again', (r) => vmOf(r, t)?.state === 'running', 150_000);
    const now = await a.host.vms.get(t.vmId);
    assert.notEqual(now.pid, pid);
    assert.equal(existsSync(`/proc/${pid}`), false, 'the old QEMU is gone');
    assert.equal(await shell(a, t.vmId, 'cat /workspace/kept'), 'kept\n');
    process.stdout.write(`# guest frozen: running again after ${Date.now() - frozenAt} ms\n`);
    assert.deepEqual(a.cp.invalid, []);
  });
});

describe('failed starts end failed with a stable code and leave nothing half-made', {
  timeout: 300_000,
}, () => {
  const cleanups: (() => Promise<void>)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch((e) => process.stderr.write(`# cleanup: ${e}\n`));
  });

  test('a corrupt image: IMAGE_INTEGRITY, retried with attempts, then given up on', async () => {
    const image = await minimalImage();
    const dir = await mkdtemp(join(tmpdir(), 'wh-img-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    // A copy of the test image store, so the shared one stays intact.
    const images = join(dir, 'images');
    await copyDir(TEST_IMAGES_DIR, images, { recursive: true });
    const dataDir = join(dir, 'data');
    await mkdir(dataDir);
    const a = await startAgent(dataDir, { imagesDir: images });
    cleanups.push(() => a.close());
    const t = desiredTenant(image, 'stopped', 1);
    a.cp.set(t);
    a.link.reconciler.wake();
    await a.cp.waitForReport('created, stopped', (r) => vmOf(r, t)?.state === 'stopped', 60_000);
    const vmDir = a.host.vms.dirOf(t.vmId);
    const files = await tree(vmDir);

    const manifest = (await a.host.store.getManifest(image)).rootfs.digest;
    const rootfs = a.host.store.blobPath(manifest);
    const fd = await open(rootfs, 'r+');
    const byte = Buffer.alloc(1);
    await fd.read(byte, 0, 1, 4096 * 100);
    byte[0] = byte[0]! ^ 0xff;
    await fd.write(byte, 0, 1, 4096 * 100);
    await fd.close();

    a.cp.set({ ...t, desiredState: 'running', generation: 2 });
    a.link.reconciler.wake();
    const first = await a.cp.waitForReport('failed', (r) => vmOf(r, t)?.state === 'failed', 60_000);
    const v = vmOf(first, t)!;
    assert.equal(v.error?.code, 'IMAGE_INTEGRITY');
    assert.equal(v.attempts?.count, 1);
    assert.ok(v.attempts?.nextAttemptAt && Date.parse(v.attempts.nextAttemptAt) > Date.now() - 1000);
    const gaveUp = await a.cp.waitForReport(
      'given up',
      (r) => vmOf(r, t)?.attempts?.nextAttemptAt === null,
      30_000,
    );
    const last = vmOf(gaveUp, t)!;
    assert.equal(last.state, 'failed');
    assert.equal(last.attempts?.count, 3);
    assert.match(
      last.error!.message,
      new RegExp(`gave up after 3 attempts; run \`warren tenant start ${t.name}\``),
    );
    assert.deepEqual(await tree(vmDir), files, 'the VM directory is as before');
    assert.equal(await cgroupsOf(t.vmId), '');
    assert.equal((await a.host.vms.get(t.vmId)).state, 'stopped');
    // Given up means given up: no further attempt while the generation stays.
    const reports = a.cp.reports.length;
    await a.cp.waitForReport('ten more heartbeats', () => a.cp.reports.length >= reports + 10, 30_000);
    assert.equal(vmOf(a.cp.reports.at(-1)!, t)?.attempts?.count, 3);
    assert.deepEqual(a.cp.invalid, []);
  });

  test('a full disk: DISK_FULL, and no partial VM directory or record left', async (t) => {
    const image = await minimalImage();
    const dir = await mkdtemp(join(tmpdir(), 'wh-full-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    try {
      await run('mount', ['-t', 'tmpfs', '-o', 'size=32m,mode=0755', 'warren-test-full', dir]);
    } catch (e) {
      t.skip(`cannot mount a tmpfs here: ${(e as Error).message}`);
      return;
    }
    cleanups.push(async () => {
      await run('umount', [dir]);
    });
    const dataDir = join(dir, 'd');
    await mkdir(dataDir);
    const a = await startAgent(dataDir);
    cleanups.push(() => a.close());
    // Leave 256 KiB: the agent has joined (its credentials are written); a VM's disks do not fit.
    const { stdout } = await run('df', ['--output=avail', '-B1', dir]);
    const avail = Number(stdout.trim().split('\n').at(-1));
    await writeFile(join(dir, 'filler'), Buffer.alloc(Math.max(0, avail - 256 * 1024)));

    const ten = desiredTenant(image, 'running', 1);
    a.cp.set(ten);
    a.link.reconciler.wake();
    const failed = await a.cp.waitForReport('failed', (r) => vmOf(r, ten)?.state === 'failed', 60_000);
    const v = vmOf(failed, ten)!;
    assert.equal(v.error?.code, 'DISK_FULL', v.error?.message);
    assert.match(v.error!.message, /no space left in .* while making VM .*free space/);
    assert.equal(v.attempts?.count, 1);
    assert.deepEqual(await readdir(join(dataDir, 'vms')), [], 'no VM directory, partial or whole');
    assert.equal(await cgroupsOf(ten.vmId), '');

    // Space again: the next attempt (same generation, after its backoff) makes it.
    await rm(join(dir, 'filler'));
    await a.cp.waitForReport('running', (r) => vmOf(r, ten)?.state === 'running', 120_000);
    assert.deepEqual(a.cp.invalid, []);
  });
});
