/**
 * Each host reports its VMM driver (WARREN_VMM) in heartbeats; the control plane shows it in the
 * host view (`warren host list`), `unknown` until the first heartbeat that carries it, and
 * refuses a value that is not a driver name.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { call, FakeAgent, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';

const CAPACITY = { vcpus: 4, memoryMiB: 8192, diskMiB: 100_000 };
let t: TestControlPlane;
let agent: FakeAgent;

before(async () => {
  t = await openTestControlPlane();
  agent = await new FakeAgent('vmm-host', CAPACITY).start(t.url, t.joinToken);
});
after(async () => {
  await agent?.stop();
  await t?.close();
});

function heartbeat(extra: Record<string, unknown>) {
  return call(t.url, 'POST', '/v1/agent/heartbeat', {
    token: agent.token,
    body: { agentVersion: 'x', capacity: CAPACITY, health: 'ok', images: [], vms: [], ...extra },
  });
}

async function shown(): Promise<string> {
  const res = await call(t.url, 'GET', '/v1/hosts', { token: t.adminToken });
  return res.body.hosts.find((h: { name: string }) => h.name === 'vmm-host').vmm;
}

test('the host view shows the VMM driver of the last heartbeat, unknown before one carried it', async () => {
  assert.equal(await shown(), 'unknown');
  assert.equal((await heartbeat({ vmm: 'libvirt' })).status, 200);
  assert.equal(await shown(), 'libvirt');
  // An agent from before the field leaves the last value in place.
  assert.equal((await heartbeat({})).status, 200);
  assert.equal(await shown(), 'libvirt');
});

test('a VMM value that is not a driver name is refused', async () => {
  for (const vmm of ['../etc', 'QEMU', `q${'x'.repeat(40)}`, '']) {
    const res = await heartbeat({ vmm });
    assert.equal(res.status, 400, `${JSON.stringify(vmm)}: ${res.text}`);
  }
  assert.equal(await shown(), 'libvirt');
});
