/**
 * Dashboard traffic wakes a suspended tenant VM (issue 13): the real host agent (in a lab
 * namespace, tenant networking on) joined to a fake control plane that gives the tenant a short
 * idle timeout; a dashboard server runs inside the VM. Once the VM is suspended (its QEMU gone),
 * an HTTP request and then a WebSocket through the agent's proxy each wake it and get their
 * answer from the server in the VM; an open WebSocket keeps the VM from being suspended.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { DesiredTenant } from '@warren/protocol';
import { endChild, qemuPidsFor } from '../helpers/daemons.ts';
import { desiredTenant, FakeControlPlane } from '../helpers/fake-control-plane.ts';
import { minimalImage } from '../helpers/image.ts';
import { spawnLabAgent } from '../helpers/lab-agent.ts';
import { NetLab } from '../helpers/netns.ts';
import { until as waitUntil } from '../helpers/until.ts';
import { DASHBOARD } from '../helpers/vm-dashboard.ts';

const AGENT_PORT = 17072;
const IDLE_MS = 2_000;

describe('dashboard HTTP and WebSocket wake a suspended VM', { timeout: 400_000 }, () => {
  const lab = new NetLab();
  let cp: FakeControlPlane | undefined;
  let agent: ChildProcess | undefined;
  let agentLog = '';
  let dataDir = '';
  let t: DesiredTenant;
  const timings: string[] = [];

  const until = <T>(what: string, check: () => Promise<T | false | undefined>, ms = 120_000) =>
    waitUntil(what, check, ms, 100).catch((e: Error) => {
      throw new Error(`${e.message}\n${agentLog.slice(-3000)}`);
    });
  const agentUrl = () => `http://${lab.hostIp}:${AGENT_PORT}`;
  const auth = () => ({ authorization: `Bearer ${cp!.joins.at(-1)!.agentToken}` });
  const stateNow = () =>
    cp!.reports.at(-1)?.vms.find((v) => v.tenantId === t.tenantId)?.state ?? 'unreported';

  /** Waits for a heartbeat that reports the VM suspended, and checks that its QEMU is gone. */
  async function suspended(): Promise<void> {
    await cp!.waitForReport(
      `${t.vmId} is suspended`,
      (r) => r.vms.some((v) => v.tenantId === t.tenantId && v.state === 'suspended'),
      60_000,
    );
    assert.deepEqual(await qemuPidsFor(t.vmId), [], 'no QEMU runs for a suspended VM');
  }

  before(async () => {
    await lab.setup();
    await lab.startInternet();
    const image = await minimalImage();
    dataDir = await mkdtemp(join(tmpdir(), 'ws-'));
    cp = await FakeControlPlane.start(lab.rootIp);
    t = { ...desiredTenant(image, 'running', 1), memoryMiB: 512 };
    cp.set(t);
    agent = spawnLabAgent(lab, {
      controlPlaneUrl: cp.url,
      joinToken: cp.joinToken,
      dataDir,
      port: AGENT_PORT,
      env: { WARREN_HOST_NAME: 'idle-lab-host', WARREN_IDLE_CHECK_MS: '250' },
      onOutput: (c) => {
        agentLog = (agentLog + c).slice(-20_000);
      },
    });
    await until('the tenant runs', async () => stateNow() === 'running');
    const put = await fetch(`${agentUrl()}/v1/vms/${t.vmId}/files?path=/tmp/dashboard.mjs`, {
      method: 'PUT',
      headers: { ...auth(), 'content-type': 'application/octet-stream' },
      body: DASHBOARD,
    });
    assert.equal(put.status, 201, await put.text());
    const exec = await fetch(`${agentUrl()}/v1/vms/${t.vmId}/exec`, {
      method: 'POST',
      headers: { ...auth(), 'content-type': 'application/json' },
      body: JSON.stringify({
        argv: ['sh', '-c', 'setsid node /tmp/dashboard.mjs </dev/null >/tmp/dashboard.log 2>&1 &'],
      }),
    });
    assert.match(await exec.text(), /"exitCode":0/);
    await until(
      'the dashboard in the VM listens',
      async () =>
        (await fetch(`${agentUrl()}/v1/vms/${t.vmId}/proxy/8080/`, { headers: auth() })).status === 200,
      60_000,
    );
    // Now idle reclamation applies to it.
    cp.set({ ...t, idleTimeoutMs: IDLE_MS });
  });

  after(async () => {
    try {
      if (cp) {
        // Deleted (desired absent): a VM the list merely stops naming is quarantined, not destroyed.
        cp.set({ ...t, desiredState: 'absent', generation: t.generation + 1 });
        await until(
          'the tenant VM is destroyed',
          async () => cp!.reports.at(-1)?.vms.length === 0 && (await qemuPidsFor(t.vmId)).length === 0,
          60_000,
        );
      }
    } catch (e) {
      process.stderr.write(`cleanup: ${e}\n`);
    }
    await endChild(agent, 'SIGKILL');
    await lab.destroy();
    await cp?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    for (const line of timings) console.log(`# ${line}`);
    for (const line of agentLog.split('\n').filter((l) => /suspended in|woke in/.test(l)))
      console.log(`# agent: ${line.trim()}`);
  });

  test('an HTTP request through the proxy wakes the suspended VM and gets its answer', async () => {
    await suspended();
    const t0 = performance.now();
    const res = await fetch(`${agentUrl()}/v1/vms/${t.vmId}/proxy/8080/after/suspend?x=1`, {
      headers: auth(),
    });
    const ms = Math.round(performance.now() - t0);
    assert.equal(res.status, 200);
    const seen = (await res.json()) as { from: string; url: string };
    assert.equal(seen.from, 'vm');
    assert.equal(seen.url, '/after/suspend?x=1');
    timings.push(`dashboard HTTP request to a suspended VM answered in ${ms} ms`);
  });

  test('a WebSocket through the proxy wakes the suspended VM, and keeps it awake while open', async () => {
    await suspended();
    const t0 = performance.now();
    const ws = new WebSocket(`ws://${lab.hostIp}:${AGENT_PORT}/v1/vms/${t.vmId}/proxy/8080/ws`, {
      headers: auth(),
    } as never);
    const messages: unknown[] = [];
    let lastMessageAt = 0;
    const echoed = new Promise<void>((resolve, reject) => {
      ws.onopen = () => ws.send('ping after wake');
      ws.onmessage = (e) => {
        messages.push(e.data);
        lastMessageAt = Date.now();
        resolve();
      };
      ws.onerror = () => reject(new Error('websocket error'));
    });
    try {
      await echoed;
      timings.push(`WebSocket to a suspended VM echoed in ${Math.round(performance.now() - t0)} ms`);
      assert.equal(messages[0], 'ping after wake');
      // Open (and quiet) for well past the idle timeout and several idle checks: still running.
      const quietUntil = lastMessageAt + IDLE_MS + 3_000;
      const report = await cp!.waitForReport(
        'a heartbeat after the open WebSocket was quiet past the idle timeout',
        () => Date.now() >= quietUntil,
        30_000,
      );
      assert.equal(report.vms.find((v) => v.tenantId === t.tenantId)?.state, 'running');
      assert.equal((await qemuPidsFor(t.vmId)).length, 1);
    } finally {
      ws.close();
    }
    // Closed: idle again, so suspended again.
    await suspended();
  });
});
