/**
 * The host agent joined to a control plane (issue 4): it joins with a join token, heartbeats
 * capacity, images and every tenant VM, and converges real microVMs to the desired state it
 * gets back. The control plane is a fake in this process; VMs, QEMU and the agent are real.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  AGENT_VERSION,
  type ControlLink,
  connectControlPlane,
  createApi,
  type Host,
  loadConfig,
  loadCredentials,
  openHost,
} from '@warren/host-agent';
import { type DesiredTenant, tenantIdOfVm } from '@warren/protocol';
import { qemuPidsFor } from '../helpers/daemons.ts';
import { desiredTenant, FakeControlPlane } from '../helpers/fake-control-plane.ts';
import { minimalImage, REPO_ROOT, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

async function errorCode(res: Response): Promise<string | undefined> {
  return ((await res.json()) as { error?: { code?: string } }).error?.code;
}

/** Destroys every VM of a data dir (re-attaching to surviving QEMUs) and removes the dir. */
async function wipe(dataDir: string, ids: string[]) {
  const host = await openHost(loadConfig({}, { dataDir, imagesDir: TEST_IMAGES_DIR, network: 'off' }));
  for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
  host.vms.close();
  for (const id of ids) for (const pid of await qemuPidsFor(id)) process.kill(pid, 'SIGKILL');
  await rm(dataDir, { recursive: true, force: true });
}

const reported = (cp: FakeControlPlane, t: DesiredTenant, state: string, generation = t.generation) =>
  cp.waitForReport(
    `${t.vmId} is ${state} at generation ${generation}`,
    (r) => r.vms.some((v) => v.tenantId === t.tenantId && v.state === state && v.generation === generation),
    90_000,
  );

/** Short, so the test sees a quarantined orphan removed. */
const QUARANTINE_MS = 4000;

describe('host agent converges tenant VMs to the control plane', { timeout: 300_000 }, () => {
  let image: string;
  let cp: FakeControlPlane;
  let dataDir: string;
  let host: Host;
  let link: ControlLink;
  let agentToken: string;
  const logs: string[] = [];
  const keepId = `keep-${randomBytes(4).toString('hex')}`;
  let a: DesiredTenant;

  const remote = (
    method: string,
    path: string,
    init: { token?: string | null; body?: string | Buffer; type?: string } = {},
  ) =>
    fetch(`${link.address}${path}`, {
      method,
      headers: {
        ...(init.token === null ? {} : { authorization: `Bearer ${init.token ?? agentToken}` }),
        ...(init.type ? { 'content-type': init.type } : {}),
      },
      ...(init.body === undefined ? {} : { body: init.body }),
    });

  before(async () => {
    image = await minimalImage();
    cp = await FakeControlPlane.start();
    dataDir = await mkdtemp(join(tmpdir(), 'wt-'));
    const config = loadConfig(
      {},
      {
        dataDir,
        imagesDir: TEST_IMAGES_DIR,
        bootTimeoutMs: 90_000,
        controlPlaneUrl: cp.url,
        joinToken: cp.joinToken,
        hostName: 'test-host',
        agentListen: '127.0.0.1:0',
        // The machine's own namespace: VMs get no NIC here (test/net/ covers networking).
        network: 'off',
        heartbeatMs: 300,
        capacityDiskMiB: 10_240,
        quarantineMs: QUARANTINE_MS,
      },
    );
    host = await openHost(config);
    link = await connectControlPlane(host, (m) => logs.push(m), { retryInitialMs: 1000, retryMaxMs: 4000 });
  });

  after(async () => {
    await link?.close();
    await cp?.close();
    if (host) {
      for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
      host.vms.close();
    }
    for (const id of [a?.vmId, keepId])
      if (id) for (const pid of await qemuPidsFor(id)) process.kill(pid, 'SIGKILL');
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test('joins with the join token, then heartbeats capacity, images and its version', async () => {
    const first = await cp.waitForReport('any', () => true, 15_000);
    assert.equal(cp.joins.length, 1);
    const joined = cp.joins[0]!;
    assert.equal(joined.name, 'test-host');
    assert.equal(joined.address, link.address);
    assert.match(joined.address, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(joined.capacity.diskMiB, 10_240);
    assert.ok(joined.capacity.vcpus >= 1 && joined.capacity.memoryMiB >= 512);
    assert.deepEqual(first.capacity, joined.capacity);
    assert.equal(first.agentVersion, AGENT_VERSION);
    assert.equal(first.health, 'ok');
    assert.equal(first.address, link.address);
    assert.ok(first.images.some((i) => i.id === image && i.profile === 'minimal'));
    assert.deepEqual(first.vms, []);

    const credentials = await loadCredentials(dataDir);
    assert.equal(credentials?.hostId, cp.hostId);
    assert.equal(credentials?.token, cp.token);
    assert.equal(credentials?.agentToken, joined.agentToken);
    assert.equal((await stat(join(dataDir, 'control-plane.json'))).mode & 0o777, 0o600);
    agentToken = joined.agentToken;
  });

  test('desired running: the VM is created, booted and reported running at that generation', async () => {
    a = desiredTenant(image, 'running', 1);
    const seenBefore = cp.reports.length;
    cp.set(a);
    // What the control plane does after changing desired state.
    assert.equal((await remote('POST', '/v1/wake')).status, 204);
    await reported(cp, a, 'running');
    const states = new Set(
      cp.reports
        .slice(seenBefore)
        .flatMap((r) => r.vms.filter((v) => v.tenantId === a.tenantId).map((v) => v.state)),
    );
    assert.ok(
      states.has('provisioning') || states.has('starting'),
      `in-flight states reported: ${[...states]}`,
    );
    const vm = await host.vms.get(a.vmId);
    assert.equal(vm.state, 'running');
    assert.deepEqual([vm.cpus, vm.memoryMiB, vm.diskMiB, vm.imageId], [1, 512, 64, image]);
  });

  test('the remote API runs exec in a tenant VM with the agent token, and refuses without it', async () => {
    const res = await remote('POST', `/v1/vms/${a.vmId}/exec`, {
      type: 'application/json',
      body: JSON.stringify({ argv: ['uname', '-r'] }),
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/x-ndjson');
    const lines = (await res.text())
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const stdout = lines
      .filter((l) => l.stdout)
      .map((l) => Buffer.from(l.stdout, 'base64').toString())
      .join('');
    assert.match(stdout, /^\d+\.\d+\.\d+\S*\n$/);
    assert.equal(lines.at(-1).exit.exitCode, 0);

    for (const token of [null, 'x'.repeat(43), `${agentToken}x`]) {
      const refused = await remote('GET', `/v1/vms/${a.vmId}/health`, { token });
      assert.equal(refused.status, 401);
      assert.equal(await errorCode(refused), 'UNAUTHENTICATED');
    }
    const health = await remote('GET', `/v1/vms/${a.vmId}/health`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { kernelRelease: string }).kernelRelease, stdout.trim());

    // Only tenant VMs exist for the control plane, even when another VM has that id.
    await host.vms.create({ id: keepId, image, diskMiB: 16 });
    for (const id of [keepId, 'ten-0123', 'TEN-0123456789ABCDEF']) {
      const other = await remote('GET', `/v1/vms/${id}/health`);
      assert.equal(other.status, 404, id);
      assert.equal(await errorCode(other), 'VM_NOT_FOUND');
    }
    const missing = await remote('GET', `/v1/vms/ten-${'0'.repeat(16)}/health`);
    assert.equal(await errorCode(missing), 'VM_NOT_FOUND');
  });

  test('files: PUT then GET round-trips through both APIs; `..` and relative paths are refused', async () => {
    const data = randomBytes(300 * 1024);
    const put = await remote('PUT', `/v1/vms/${a.vmId}/files?path=/workspace/blob.bin`, {
      type: 'application/octet-stream',
      body: data,
    });
    assert.equal(put.status, 201);
    assert.deepEqual(await put.json(), { path: '/workspace/blob.bin', bytes: data.length });
    const get = await remote('GET', `/v1/vms/${a.vmId}/files?path=/workspace/blob.bin`);
    assert.equal(get.status, 200);
    assert.equal(get.headers.get('content-type'), 'application/octet-stream');
    assert.ok(Buffer.from(await get.arrayBuffer()).equals(data));

    for (const path of ['/workspace/../etc/passwd', 'workspace/blob.bin']) {
      const bad = await remote('GET', `/v1/vms/${a.vmId}/files?path=${encodeURIComponent(path)}`);
      assert.equal(bad.status, 400, path);
      assert.equal(await errorCode(bad), 'INVALID_ARGUMENT');
    }
    const badPut = await remote('PUT', `/v1/vms/${a.vmId}/files?path=/workspace/../x`, {
      type: 'application/octet-stream',
      body: 'x',
    });
    assert.equal(badPut.status, 400);
    const absent = await remote('GET', `/v1/vms/${a.vmId}/files?path=/workspace/nope`);
    assert.equal(absent.status, 404);
    assert.equal(await errorCode(absent), 'NOT_FOUND');

    // The same routes on the local API (unix socket), which any VM id may use.
    const local = createApi(host);
    try {
      const lput = await local.inject({
        method: 'PUT',
        url: `/v1/vms/${a.vmId}/files?path=/tmp/local.txt`,
        headers: { 'content-type': 'application/octet-stream' },
        payload: Buffer.from('local api\n'),
      });
      assert.equal(lput.statusCode, 201, lput.body);
      const lget = await local.inject({ method: 'GET', url: `/v1/vms/${a.vmId}/files?path=/tmp/local.txt` });
      assert.equal(lget.body, 'local api\n');
      const lbad = await local.inject({ method: 'GET', url: `/v1/vms/${a.vmId}/files?path=/tmp/../etc` });
      assert.equal(lbad.statusCode, 400);
      const stopped = await local.inject({
        method: 'GET',
        url: `/v1/vms/${keepId}/files?path=/etc/hostname`,
      });
      assert.equal(stopped.statusCode, 409);
      assert.equal(stopped.json().error.code, 'VM_NOT_RUNNING');
    } finally {
      await local.close();
    }
  });

  test('a VM that crashes while desired running is reported crashed, then restarted', async () => {
    // What the guest flushed survives a crash of its VM; unflushed page cache would not.
    const sync = await remote('POST', `/v1/vms/${a.vmId}/exec`, {
      type: 'application/json',
      body: JSON.stringify({ argv: ['sync'] }),
    });
    assert.match(await sync.text(), /"exitCode":0/);
    const { pid } = await host.vms.get(a.vmId);
    process.kill(pid!, 'SIGKILL');
    await reported(cp, a, 'crashed');
    await reported(cp, a, 'running');
    const again = await host.vms.get(a.vmId);
    assert.notEqual(again.pid, pid);
    assert.deepEqual(await qemuPidsFor(a.vmId), [again.pid]);
    const get = await remote('GET', `/v1/vms/${a.vmId}/files?path=/workspace/blob.bin`);
    assert.equal((await get.arrayBuffer()).byteLength, 300 * 1024);
  });

  test('an orphan tenant VM (not in the desired list) is quarantined, then removed after WARREN_QUARANTINE_MS; a non-tenant VM is left alone', async () => {
    const orphan = `ten-${randomBytes(8).toString('hex')}`;
    const tenantId = tenantIdOfVm(orphan);
    await host.vms.create({ id: orphan, image, diskMiB: 16 });
    link.reconciler.wake();
    const seen = await cp.waitForReport(
      'the orphan is reported quarantined',
      (r) => (r.quarantined ?? []).some((q) => q.vmId === orphan),
      15_000,
    );
    const q = seen.quarantined!.find((v) => v.vmId === orphan)!;
    assert.deepEqual([q.tenantId, q.imageId, q.diskMiB], [tenantId, image, 16]);
    assert.equal(Date.parse(q.removeAfter) - Date.parse(q.quarantinedAt), QUARANTINE_MS);
    assert.ok(!seen.vms.some((v) => v.tenantId === tenantId), 'not among the tenant VMs');
    assert.deepEqual((await host.vms.get(orphan)).quarantine, {
      at: q.quarantinedAt,
      removeAfter: q.removeAfter,
    });
    assert.ok(existsSync(join(host.vms.dirOf(orphan), 'data.img')), 'its disks are kept');
    await until('the orphan is gone', () => !existsSync(host.vms.dirOf(orphan)), QUARANTINE_MS + 15_000);
    assert.ok(Date.now() >= Date.parse(q.removeAfter), 'not before removeAfter');
    assert.ok(logs.some((l) => l.includes(`destroying VM ${orphan}: quarantined since`)));
    await cp.waitForReport(
      'no longer reported',
      (r) => !(r.quarantined ?? []).some((v) => v.vmId === orphan),
    );
    assert.equal((await host.vms.get(keepId)).state, 'stopped');
    assert.equal((await host.vms.get(a.vmId)).state, 'running');
  });

  test('a tenant that cannot converge is reported failed with the error and retried with backoff', async () => {
    const b = desiredTenant(`sha256:${'0'.repeat(64)}`, 'running', 7);
    cp.set(b);
    const failed = await reported(cp, b, 'failed');
    assert.equal(failed.vms.find((v) => v.tenantId === b.tenantId)?.error?.code, 'IMAGE_NOT_FOUND');
    const attempts = () => logs.filter((l) => l.includes(b.vmId) && l.includes('failed')).length;
    const heartbeats = cp.reports.length;
    await sleep(3000);
    // About 10 heartbeats went by; retries wait 1 s, then 2 s.
    assert.ok(cp.reports.length - heartbeats >= 5);
    assert.ok(attempts() <= 3, `${attempts()} attempts in 3 s`);
    cp.set({ ...b, desiredState: 'absent', generation: 8 });
    await cp.waitForReport('b is no longer reported', (r) => !r.vms.some((v) => v.tenantId === b.tenantId));
    cp.tenants = cp.tenants.filter((t) => t.tenantId !== b.tenantId);
  });

  test('a heartbeat refused with 401 makes the agent join again with its join token', async () => {
    cp.token = undefined;
    await cp.waitForReport('a heartbeat after the second join', () => cp.joins.length === 2, 15_000);
    assert.equal(cp.joins[1]!.agentToken, agentToken);
    assert.equal((await loadCredentials(dataDir))?.token, cp.token);
    assert.equal((await remote('GET', `/v1/vms/${a.vmId}/health`)).status, 200);
  });

  test('desired stopped: the VM is stopped and reported stopped', async () => {
    a = { ...a, desiredState: 'stopped', generation: 2 };
    cp.set(a);
    await remote('POST', '/v1/wake');
    await reported(cp, a, 'stopped');
    const vm = await host.vms.get(a.vmId);
    assert.equal(vm.state, 'stopped');
    assert.equal(vm.lastExit?.graceful, true);
    assert.deepEqual(await qemuPidsFor(a.vmId), []);
  });

  test('desired absent: the VM and its directory are gone and it is no longer reported', async () => {
    const dir = host.vms.dirOf(a.vmId);
    a = { ...a, desiredState: 'absent', generation: 3 };
    cp.set(a);
    await remote('POST', '/v1/wake');
    await cp.waitForReport('a is gone', (r) => !r.vms.some((v) => v.tenantId === a.tenantId));
    assert.equal(existsSync(dir), false);
    await assert.rejects(host.vms.get(a.vmId), { code: 'VM_NOT_FOUND' });
    assert.deepEqual((await readdir(join(dataDir, 'vms'))).sort(), [keepId]);
    assert.deepEqual(cp.invalid, []);
  });
});

describe('kill -9 of the agent in the middle of a create', { timeout: 300_000 }, () => {
  let dataDir: string | undefined;
  let cp: FakeControlPlane | undefined;
  let agent: ChildProcess | undefined;
  /** For the cleanup: the VM the test may have left. */
  let vmId: string | undefined;

  function startAgent(extraEnv: Record<string, string> = {}): ChildProcess {
    const child = spawn(
      join(REPO_ROOT, 'scripts', 'node.sh'),
      [join(REPO_ROOT, 'apps/host-agent/src/main.ts')],
      {
        env: {
          ...process.env,
          WARREN_DATA_DIR: dataDir!,
          WARREN_IMAGES_DIR: TEST_IMAGES_DIR,
          WARREN_CONTROL_PLANE_URL: cp!.url,
          WARREN_JOIN_TOKEN: cp!.joinToken,
          WARREN_AGENT_LISTEN: '127.0.0.1:0',
          WARREN_HEARTBEAT_MS: '300',
          WARREN_NETWORK: 'off',
          ...extraEnv,
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let log = '';
    child.stderr!.on('data', (chunk) => (log += chunk));
    child.on('exit', (code, signal) => {
      if (code) process.stderr.write(`host agent exited ${code} ${signal}: ${log}\n`);
    });
    return child;
  }

  async function killAgent(signal: NodeJS.Signals) {
    if (!agent || agent.exitCode !== null || agent.signalCode !== null) return;
    const exited = new Promise((r) => agent!.once('exit', r));
    agent.kill(signal);
    await exited;
  }

  after(async () => {
    await killAgent('SIGKILL');
    await cp?.close();
    if (dataDir) await wipe(dataDir, vmId ? [vmId] : []);
  });

  test('the restarted agent removes the half-made VM and converges to exactly one running VM', async () => {
    const image = await minimalImage();
    cp = await FakeControlPlane.start();
    dataDir = await mkdtemp(join(tmpdir(), 'wt-'));
    let c = desiredTenant(image, 'running', 1);
    vmId = c.vmId;
    cp.set(c);

    // A qemu-img that takes a second widens the create to a window this test can hit surely.
    const bin = join(dataDir, 'slow-bin');
    await mkdir(bin);
    await writeFile(
      join(bin, 'qemu-img'),
      `#!/bin/sh\nsleep 1\nPATH='${process.env.PATH}' exec qemu-img "$@"\n`,
    );
    await chmod(join(bin, 'qemu-img'), 0o755);
    agent = startAgent({ PATH: `${bin}:${process.env.PATH}` });

    const partial = join(dataDir, 'vms', `.partial-${c.vmId}`);
    await until('the create began', () => existsSync(partial), 60_000);
    await killAgent('SIGKILL');
    assert.ok(existsSync(partial), 'the agent died with the create half done');
    assert.equal(existsSync(join(dataDir, 'vms', c.vmId)), false);

    agent = startAgent();
    await reported(cp, c, 'running');
    assert.deepEqual(await readdir(join(dataDir, 'vms')), [c.vmId]);
    assert.equal((await qemuPidsFor(c.vmId)).length, 1);
    assert.equal(cp.joins.length, 1, 'the second agent used the saved credentials');

    // A clean stop of the agent leaves the VM running for the next one.
    await killAgent('SIGTERM');
    assert.equal((await qemuPidsFor(c.vmId)).length, 1);
    agent = startAgent();
    c = { ...c, desiredState: 'absent', generation: 2 };
    cp.set(c);
    await until(
      'the VM is destroyed',
      async () => (await readdir(join(dataDir!, 'vms'))).length === 0,
      60_000,
    );
    assert.deepEqual(await qemuPidsFor(c.vmId), []);
    await killAgent('SIGTERM');
    assert.deepEqual(cp.invalid, []);
  });
});
