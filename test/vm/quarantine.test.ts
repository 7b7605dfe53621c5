/**
 * Acceptance 4 of issue 13: a host agent with running tenant VMs pointed at an empty control
 * plane (a real one, started fresh here) quarantines them: stopped, kept with every byte of
 * their disks, never destroyed. Then the control plane that knows the tenant lists it again
 * (an admin adopting it): it leaves quarantine and runs with its data.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { type ControlLink, connectControlPlane, type Host, loadConfig, openHost } from '@warren/host-agent';
import type { DesiredTenant } from '@warren/protocol';
import { WarrenClient } from '@warren/sdk';
import { desiredTenant, FakeControlPlane } from '../helpers/fake-control-plane.ts';
import { freePort } from '../helpers/free-port.ts';
import { collect } from '../helpers/host.ts';
import { minimalImage, REPO_ROOT, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const run = promisify(execFile);

let dataDir: string | undefined;
let cpDir: string | undefined;
let realCp: ChildProcess | undefined;
let fake: FakeControlPlane | undefined;
let host: Host | undefined;
let link: ControlLink | undefined;

after(async () => {
  await link?.close().catch(() => {});
  await fake?.close();
  if (realCp && realCp.exitCode === null && realCp.signalCode === null) {
    const exited = new Promise((r) => realCp!.once('exit', r));
    realCp.kill('SIGKILL');
    await exited;
  }
  if (host) {
    for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
    host.vms.close();
  }
  for (const dir of [dataDir, cpDir]) if (dir) await rm(dir, { recursive: true, force: true });
});

async function shell(vmId: string, script: string): Promise<string> {
  const guest = await host!.vms.guest(vmId);
  const r = await collect((o) => guest.exec({ argv: ['sh', '-c', script], timeoutMs: 30_000 }, o));
  assert.equal((r.exit as { exitCode: number }).exitCode, 0, r.stderr);
  return r.stdout;
}

/** A file of the stopped VM's data volume, read from its disk image on the host. */
async function fromDisk(vmId: string, path: string): Promise<string> {
  const { stdout } = await run('debugfs', ['-R', `cat ${path}`, join(host!.vms.dirOf(vmId), 'data.img')]);
  return stdout;
}

test('a host pointed at an empty control plane quarantines its tenant VMs and destroys no disk; adopting one brings it back', {
  timeout: 400_000,
}, async () => {
  const image = await minimalImage();
  dataDir = await mkdtemp(join(tmpdir(), 'wq-'));
  fake = await FakeControlPlane.start();
  const logs: string[] = [];
  const configFor = (url: string, joinToken: string) =>
    loadConfig(
      {},
      {
        dataDir: dataDir!,
        imagesDir: TEST_IMAGES_DIR,
        bootTimeoutMs: 90_000,
        controlPlaneUrl: url,
        joinToken,
        hostName: 'test-host',
        agentListen: '127.0.0.1:0',
        network: 'off',
        heartbeatMs: 300,
        capacityDiskMiB: 10_240,
      },
    );
  const h = await openHost(configFor(fake.url, fake.joinToken));
  host = h;
  link = await connectControlPlane(h, (m) => logs.push(m));

  // Two tenants running on the control plane that placed them.
  const tenants: DesiredTenant[] = [desiredTenant(image, 'running', 1), desiredTenant(image, 'running', 1)];
  for (const t of tenants) fake.set(t);
  link.reconciler.wake();
  await fake.waitForReport(
    'both run',
    (r) => tenants.every((t) => r.vms.some((v) => v.tenantId === t.tenantId && v.state === 'running')),
    180_000,
  );
  for (const t of tenants) await shell(t.vmId, `echo ${t.tenantId} > /workspace/kept && sync`);
  const sizes = await Promise.all(
    tenants.map(async (t) => (await stat(join(h.vms.dirOf(t.vmId), 'data.img'))).size),
  );
  await link.close();
  link = undefined;

  // A fresh control plane: its own empty database; the host joins it with its join token.
  cpDir = await mkdtemp(join(tmpdir(), 'wq-cp-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let cpLog = '';
  realCp = spawn(join(REPO_ROOT, 'scripts', 'node.sh'), [join(REPO_ROOT, 'apps/control-plane/src/main.ts')], {
    env: {
      ...process.env,
      WARREN_DATA_DIR: cpDir,
      WARREN_API_PORT: String(port),
      WARREN_BACKUP_DRILL_INTERVAL_MS: '0',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  realCp.stderr!.on('data', (b) => {
    cpLog = (cpLog + b).slice(-8000);
  });
  await until('the control plane answers', async () => (await fetch(`${url}/v1/health`)).ok, 60_000);
  const joinToken = (await readFile(join(cpDir, 'control-plane', 'join-token'), 'utf8')).trim();
  const adminToken = (await readFile(join(cpDir, 'control-plane', 'admin-token'), 'utf8')).trim();
  link = await connectControlPlane({ ...h, config: configFor(url, joinToken) }, (m) => logs.push(m));
  const admin = new WarrenClient({ url, token: adminToken });
  await until(
    'the host joined the fresh control plane',
    async () => (await admin.hosts.list()).length === 1,
    30_000,
  );

  for (const t of tenants) {
    await until(
      `${t.vmId} is quarantined and stopped`,
      async () => {
        const vm = await h.vms.get(t.vmId);
        return vm.quarantine && vm.state === 'stopped';
      },
      120_000,
    );
  }
  assert.deepEqual(await admin.tenants.list({}), [], 'the fresh control plane knows no tenant');
  for (const [i, t] of tenants.entries()) {
    const dir = h.vms.dirOf(t.vmId);
    assert.ok(existsSync(dir), cpLog);
    assert.equal((await stat(join(dir, 'data.img'))).size, sizes[i]);
    assert.equal(await fromDisk(t.vmId, '/kept'), `${t.tenantId}\n`, 'the data volume holds its bytes');
    const vm = await h.vms.get(t.vmId);
    assert.ok(
      Date.parse(vm.quarantine!.removeAfter) - Date.parse(vm.quarantine!.at) >= 7 * 86_400_000 - 1000,
    );
    assert.ok(logs.some((l) => l.includes(`VM ${t.vmId} is not in the control plane's desired list`)));
  }
  assert.ok(!logs.some((l) => l.startsWith('destroying VM')), 'nothing destroyed');
  await link.close();
  link = undefined;

  // Back to the control plane that knows the tenants, which lists none at first: the VMs are
  // reported quarantined (not as tenant VMs); then it lists one again (adopted).
  fake.tenants = [];
  link = await connectControlPlane({ ...h, config: configFor(fake.url, fake.joinToken) }, (m) =>
    logs.push(m),
  );
  const report = await fake.waitForReport(
    'both reported quarantined',
    (r) => tenants.every((t) => (r.quarantined ?? []).some((q) => q.vmId === t.vmId)),
    30_000,
  );
  assert.deepEqual(report.vms, []);
  const [adopted, other] = tenants as [DesiredTenant, DesiredTenant];
  fake.set({ ...adopted, generation: 2 });
  link.reconciler.wake();
  await fake.waitForReport(
    'the adopted tenant runs, the other stays quarantined',
    (r) =>
      r.vms.some((v) => v.tenantId === adopted.tenantId && v.state === 'running' && v.generation === 2) &&
      (r.quarantined ?? []).some((q) => q.vmId === other.vmId) &&
      !(r.quarantined ?? []).some((q) => q.vmId === adopted.vmId),
    120_000,
  );
  assert.equal((await h.vms.get(adopted.vmId)).quarantine, undefined);
  assert.equal(await shell(adopted.vmId, 'cat /workspace/kept'), `${adopted.tenantId}\n`);
  assert.equal((await h.vms.get(other.vmId)).state, 'stopped');

  // An explicit delete of a quarantined VM (desired absent) removes it at once.
  fake.set({ ...other, desiredState: 'absent', generation: 2 });
  link.reconciler.wake();
  await until('the deleted one is gone', () => !existsSync(h.vms.dirOf(other.vmId)), 30_000);
  await fake.waitForReport('nothing quarantined', (r) => (r.quarantined ?? []).length === 0, 15_000);
  assert.deepEqual(fake.invalid, []);
});
