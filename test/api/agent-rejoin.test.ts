/**
 * The host agent's own join logic (its Reconciler, with stand-ins for its VMs and images)
 * against a real control plane, after issue 9 made re-joining an existing name need proof: an
 * agent restarting with its saved credentials keeps working without joining again; one that
 * lost them is refused (HOST_EXISTS) until an admin gives it a re-join token, and its refused
 * attempts change nothing.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  ControlPlaneClient,
  credentialsPathOf,
  loadCredentials,
  newAgentToken,
  Reconciler,
  type ReconcilerOptions,
} from '@warren/host-agent';
import { call, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { until } from '../helpers/until.ts';

let t: TestControlPlane;
let dataDir: string;
const running: Reconciler[] = [];

before(async () => {
  t = await openTestControlPlane();
  dataDir = await mkdtemp(join(tmpdir(), 'wrejoin-'));
});

after(async () => {
  for (const r of running) await r.stop();
  await t?.close();
  await rm(dataDir, { recursive: true, force: true });
});

/** An agent named `worker-1` with no VMs and no images; only its control-plane link is real. */
function agent(options: Partial<ReconcilerOptions>, log: string[] = []): Reconciler {
  const vms = { on() {}, off() {}, list: async () => [], networkEnabled: false };
  const r = new Reconciler({
    vms: vms as unknown as ReconcilerOptions['vms'],
    store: { list: async () => [] } as unknown as ReconcilerOptions['store'],
    client: new ControlPlaneClient(t.url),
    controlPlaneUrl: t.url,
    dataDir,
    hostName: 'worker-1',
    address: 'http://127.0.0.1:7071',
    agentToken: newAgentToken(),
    agentVersion: 'test',
    capacity: { vcpus: 2, memoryMiB: 2048, diskMiB: 10_000 },
    heartbeatMs: 100,
    retryMaxMs: 200,
    log: (m) => log.push(m),
    ...options,
  });
  running.push(r);
  r.start();
  return r;
}

async function stop(r: Reconciler): Promise<void> {
  await r.stop();
  running.splice(running.indexOf(r), 1);
}

async function host() {
  return t.cp.store.db
    .selectFrom('hosts')
    .selectAll()
    .where('name', '=', 'worker-1')
    .executeTakeFirstOrThrow();
}

async function joins(): Promise<{ result: string }[]> {
  return (await call(t.url, 'GET', '/v1/audit?action=host.join', { token: t.adminToken })).body.events;
}

test('an agent restarting with its saved credentials heartbeats without joining again', async () => {
  const first = agent({ joinToken: t.joinToken });
  await until('the first join', () => first.hostId);
  const hostId = first.hostId;
  await stop(first);
  const saved = await loadCredentials(dataDir);
  assert.equal(saved?.hostId, hostId);
  const since = (await host()).last_heartbeat_at;
  const second = agent({ joinToken: t.joinToken, credentials: saved!, agentToken: saved!.agentToken });
  await until('a heartbeat of the restarted agent', async () => (await host()).last_heartbeat_at !== since);
  assert.equal(second.hostId, hostId);
  await stop(second);
  assert.deepEqual(
    (await joins()).map((e) => e.result),
    ['ok'],
  );
});

test('an agent that lost its credentials is refused with HOST_EXISTS until an admin gives it a re-join token', async () => {
  const before = await host();
  await rm(credentialsPathOf(dataDir));
  const log: string[] = [];
  const lost = agent({ joinToken: t.joinToken, address: 'http://127.0.0.1:7999' }, log);
  await until('the refused join to be logged', () => log.some((l) => l.includes('HOST_EXISTS')));
  assert.match(log.find((l) => l.includes('HOST_EXISTS'))!, /warren host rejoin worker-1/);
  await stop(lost);
  const unchanged = await host();
  assert.equal(unchanged.address, before.address);
  assert.equal(unchanged.agent_token, before.agent_token);

  const rejoin = await call(t.url, 'POST', '/v1/hosts/worker-1/rejoin', { token: t.adminToken });
  assert.equal(rejoin.status, 201, rejoin.text);
  const replaced = agent({ joinToken: rejoin.body.token, address: 'http://127.0.0.1:7999' });
  await until('the re-join', () => replaced.hostId);
  assert.equal(replaced.hostId, before.id);
  assert.equal((await host()).address, 'http://127.0.0.1:7999');
  await stop(replaced);
});
