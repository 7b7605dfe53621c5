/**
 * The dashboard proxy end to end, through a real VM: the real control plane (in this process,
 * on the root end of the lab's veth) → the real host agent (in the lab's host namespace) → the
 * tenant VM's TAP → an HTTP server and a WebSocket echo running inside the VM. Issue 5, point 2.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WarrenClient } from '@warren/sdk';
import { openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { deleteAllTenants, endChild } from '../helpers/daemons.ts';
import { minimalImage } from '../helpers/image.ts';
import { spawnLabAgent } from '../helpers/lab-agent.ts';
import { NetLab } from '../helpers/netns.ts';
import { until as waitUntil } from '../helpers/until.ts';
import { DASHBOARD } from '../helpers/vm-dashboard.ts';

const AGENT_PORT = 17071;

describe('dashboard proxy through a real VM', { timeout: 400_000 }, () => {
  const lab = new NetLab();
  let t: TestControlPlane | undefined;
  let agent: ChildProcess | undefined;
  let agentLog = '';
  let dataDir = '';
  let keyA = '';
  let keyB = '';
  const admin = () => new WarrenClient({ url: t!.url, token: t!.adminToken });

  const until = <T>(what: string, check: () => Promise<T | false | undefined>, ms = 180_000) =>
    waitUntil(what, check, ms, 250).catch((e: Error) => {
      throw new Error(`${e.message}\n${agentLog.slice(-3000)}`);
    });

  before(async () => {
    await lab.setup();
    await lab.startInternet();
    await minimalImage();
    dataDir = await mkdtemp(join(tmpdir(), 'wd-'));
    // The control plane listens on the root end of the veth, where the host namespace reaches it.
    t = await openTestControlPlane({ host: lab.rootIp, defaultProfile: 'minimal' });
    agent = spawnLabAgent(lab, {
      controlPlaneUrl: t.url,
      joinToken: t.joinToken,
      dataDir,
      port: AGENT_PORT,
      env: { WARREN_HOST_NAME: 'lab-host' },
      onOutput: (c) => {
        agentLog = (agentLog + c).slice(-20_000);
      },
    });
    await until('the host to join', async () =>
      (await admin().hosts.list()).some((h) => h.health === 'healthy'),
    );
    for (const name of ['dash-a', 'dash-b'])
      await admin().tenants.create({ name, memoryMiB: 512, diskMiB: 64 });
    await until('both tenants to run', async () =>
      (await admin().tenants.list()).every((x) => x.state === 'running'),
    );
    keyA = (await admin().keys.create({ tenant: 'dash-a' })).token;
    keyB = (await admin().keys.create({ tenant: 'dash-b' })).token;
    const a = new WarrenClient({ url: t.url, token: keyA });
    await a.tenants.upload('dash-a', '/tmp/dashboard.mjs', Buffer.from(DASHBOARD));
    const started = await a.tenants.exec(
      'dash-a',
      { argv: ['sh', '-c', 'setsid node /tmp/dashboard.mjs </dev/null >/tmp/dashboard.log 2>&1 &'] },
      {},
    );
    assert.equal(started.exitCode, 0);
    await until(
      'the dashboard in the VM to listen',
      async () => {
        const r = await fetch(`${t!.url}/t/dash-a/dashboard/`, {
          headers: { authorization: `Bearer ${keyA}` },
        });
        return r.status === 200;
      },
      60_000,
    );
  });

  after(async () => {
    try {
      if (t) await deleteAllTenants(admin());
    } catch (e) {
      process.stderr.write(`cleanup: ${e}\n`);
    }
    await endChild(agent, 'SIGKILL');
    await lab.destroy();
    await t?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test('HTTP reaches the server in the VM; the VM sees no platform credential, but X-Forwarded-*', async () => {
    const res = await fetch(`${t!.url}/t/dash-a/dashboard/some/page?q=1`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${keyA}`,
        cookie: 'theme=dark; warren_session=forged',
        'x-forwarded-for': '6.6.6.6',
        'content-type': 'text/plain',
      },
      body: 'hello vm',
    });
    assert.equal(res.status, 200);
    const seen = (await res.json()) as {
      from: string;
      url: string;
      method: string;
      body: string;
      headers: Record<string, string>;
    };
    assert.equal(seen.from, 'vm');
    assert.equal(seen.method, 'POST');
    assert.equal(seen.url, '/some/page?q=1');
    assert.equal(seen.body, 'hello vm');
    assert.equal(seen.headers.authorization, undefined);
    assert.equal(seen.headers.cookie, 'theme=dark');
    assert.doesNotMatch(JSON.stringify(seen.headers), new RegExp(`${keyA.slice(-16)}|warren_session|wrn_`));
    assert.equal(seen.headers['x-forwarded-prefix'], '/t/dash-a/dashboard');
    assert.notEqual(seen.headers['x-forwarded-for'], '6.6.6.6');
  });

  test('without credentials 401; with tenant B’s key 404; on its own origin by a login link, and the VM sees no cookie of ours', async () => {
    const none = await fetch(`${t!.url}/t/dash-a/dashboard/`);
    assert.equal(none.status, 401);
    const other = await fetch(`${t!.url}/t/dash-a/dashboard/`, {
      headers: { authorization: `Bearer ${keyB}` },
    });
    assert.equal(other.status, 404);
    assert.equal(((await other.json()) as { error: { code: string } }).error.code, 'NOT_FOUND');
    const login = await fetch(`${t!.url}/v1/sessions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${keyA}`, 'content-type': 'application/json' },
      body: JSON.stringify({}),
    });
    assert.equal(login.status, 201, await login.clone().text());
    assert.equal(login.headers.get('set-cookie'), null);
    const link = new URL(((await login.json()) as { loginUrl: string }).loginUrl);
    assert.equal(link.hostname, 'dash-a.dashboard.localhost');
    // The browser's request to <tenant>.dashboard.localhost, sent to the control plane's address.
    const onOrigin = (path: string, cookie?: string) =>
      new Promise<{ status: number; setCookie: string[]; body: string }>((resolve, reject) => {
        const req = request(`${t!.url}${path}`, {
          headers: { host: link.host, ...(cookie ? { cookie } : {}) },
        });
        req.on('response', (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () =>
            resolve({ status: res.statusCode!, setCookie: res.headers['set-cookie'] ?? [], body }),
          );
        });
        req.on('error', reject);
        req.end();
      });
    const page = await onOrigin(`${link.pathname}${link.search}`);
    assert.equal(page.status, 200, page.body);
    const cookie = page.setCookie[0]!.split(';')[0]!;
    assert.match(cookie, /^__Host-warren_session=/);
    const viaCookie = await onOrigin('/x', `theme=dark; ${cookie}`);
    assert.equal(viaCookie.status, 200, viaCookie.body);
    const seen = JSON.parse(viaCookie.body) as { url: string; headers: Record<string, string> };
    assert.equal(seen.url, '/x');
    assert.equal(seen.headers.cookie, 'theme=dark');
    assert.equal(seen.headers['x-forwarded-prefix'], undefined);
    // The app's own cookie stays on its origin; in the path form, inside its prefix.
    assert.deepEqual(viaCookie.setCookie, ['app=1; Path=/']);
    // The path form honours no cookie.
    const pathForm = await fetch(`${t!.url}/t/dash-a/dashboard/x`, { headers: { cookie } });
    assert.equal(pathForm.status, 401);
    const withKey = await fetch(`${t!.url}/t/dash-a/dashboard/x`, {
      headers: { authorization: `Bearer ${keyA}` },
    });
    assert.deepEqual(withKey.headers.getSetCookie(), ['app=1; Path=/t/dash-a/dashboard/']);
  });

  test('a WebSocket echo in the VM answers through the proxy', async () => {
    const ws = new WebSocket(`${t!.url.replace('http', 'ws')}/t/dash-a/dashboard/ws`, {
      headers: { authorization: `Bearer ${keyA}` },
    } as never);
    ws.binaryType = 'arraybuffer';
    const messages: unknown[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => {
        ws.send('ping from the test');
        ws.send(new Uint8Array([1, 2, 3, 250]));
      };
      ws.onmessage = (e) => {
        messages.push(e.data);
        if (messages.length === 2) resolve();
      };
      ws.onerror = () => reject(new Error('websocket error'));
    });
    ws.close();
    assert.equal(messages[0], 'ping from the test');
    assert.deepEqual([...new Uint8Array(messages[1] as ArrayBuffer)], [1, 2, 3, 250]);
  });

  test('a stopped tenant’s dashboard is a clear 503', async () => {
    await admin().tenants.stop('dash-a');
    await until('stopped', async () => (await admin().tenants.get('dash-a')).state === 'stopped', 60_000);
    const res = await fetch(`${t!.url}/t/dash-a/dashboard/`, {
      headers: { authorization: `Bearer ${keyA}` },
    });
    assert.equal(res.status, 503);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'DASHBOARD_UNAVAILABLE');
  });
});
