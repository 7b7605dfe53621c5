/**
 * An OpenClaw workspace end to end (issue 14, point 3): the `openclaw` image on a real VM, the
 * real control plane and host agent, and headless Chromium loading the gateway's Control UI at
 * the tenant's dashboard origin, authenticated (a Warren session for the origin, the gateway
 * token for the gateway), with its WebSocket connected, and the gateway listing a shared skill.
 *
 * Everything the gateway needs comes from the platform as a user would set it up: the skill is
 * pushed with `warren skill push`, the tenant made with `warren tenant create mybot
 * --image-profile openclaw --skill …`, the gateway token is generated at create and delivered
 * as a secret, its allowed origin rendered into openclaw.json, and the dashboard login hands
 * the browser the token. One VM boot for every check; the gateway's start under TCG dominates.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chooseAccelerator } from '@warren/host-agent';
import { WarrenClient } from '@warren/sdk';
import type { BrowserContext, WebSocket as PageSocket } from 'playwright-core';
import { getWithHost, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { launchChromiumProfile } from '../helpers/browser.ts';
import { runWarren } from '../helpers/cli.ts';
import { deleteAllTenants, endChild } from '../helpers/daemons.ts';
import { openclawImage, REPO_ROOT } from '../helpers/image.ts';
import { spawnLabAgent } from '../helpers/lab-agent.ts';
import { NetLab } from '../helpers/netns.ts';
import { until as waitUntil } from '../helpers/until.ts';

const AGENT_PORT = 17072;
const TENANT = 'mybot';
const SKILL = 'warren-hello';
/** Where the screenshot goes (ignored by git): look at it after a run. */
const ARTIFACTS = join(REPO_ROOT, 'tmp', 'artifacts');
/**
 * The gateway's first start inside a TCG guest, measured: 200-420 s from its token to /healthz
 * here (2 cores shared with other VM tests; ~20 s on the host): OpenClaw compiles a large
 * program and loads its plugins under emulation. Seconds on KVM.
 */
const GATEWAY_START_MS = 900_000;

/**
 * On KVM the whole file takes a minute or two and runs with the rest. Under TCG (this 2-core
 * development machine) building the openclaw image (2.5-7 min) and the gateway's first start
 * (200-420 s) would take `npm test` past its 30-minute budget: there it is opt-in,
 * WARREN_TEST_OPENCLAW=1. WARREN_TEST_OPENCLAW=0 skips it anywhere.
 */
const accel = await chooseAccelerator('auto');
const OPENCLAW_SKIP =
  process.env.WARREN_TEST_OPENCLAW === '1' ||
  (accel.accel === 'kvm' && process.env.WARREN_TEST_OPENCLAW !== '0')
    ? false
    : process.env.WARREN_TEST_OPENCLAW === '0'
      ? 'WARREN_TEST_OPENCLAW=0'
      : `opt-in under TCG (WARREN_TEST_OPENCLAW=1; ${accel.reason}): the openclaw image build and its gateway start take ~8 min here, past npm test's budget`;

describe('OpenClaw workspace through the dashboard proxy', {
  timeout: 1_500_000,
  skip: OPENCLAW_SKIP,
}, () => {
  const lab = new NetLab();
  let t: TestControlPlane | undefined;
  let agent: ChildProcess | undefined;
  let agentLog = '';
  let dataDir = '';
  let scratch = '';
  let profile = '';
  let context: BrowserContext | undefined;
  let forwarder: Server | undefined;
  let key = '';
  const admin = () => new WarrenClient({ url: t!.url, token: t!.adminToken });
  const client = () => new WarrenClient({ url: t!.url, token: key });
  const origin = () => `http://${TENANT}.dashboard.localhost:${new URL(t!.url).port}`;

  /** The end of the VM's console: the gateway's own log lines (ANSI colours dropped). */
  const gatewayLog = async () => {
    const dirs = await readdir(join(dataDir, 'vms')).catch(() => [] as string[]);
    const logs = await Promise.all(
      dirs.map((d) => readFile(join(dataDir, 'vms', d, 'console.log'), 'utf8').catch(() => '')),
    );
    const ansi = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g');
    return logs.join('\n').replace(ansi, '').slice(-4000);
  };
  const until = <T>(what: string, check: () => Promise<T | false | undefined>, ms = 180_000) =>
    waitUntil(what, check, ms, 500).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${agentLog.slice(-3000)}\nVM console:\n${await gatewayLog()}`);
    });

  /** Runs a command in the guest as root; its output. */
  async function sh(script: string, timeoutMs = 120_000): Promise<string> {
    let out = '';
    let err = '';
    const r = await client().tenants.exec(
      TENANT,
      { argv: ['sh', '-c', script], timeoutMs },
      { onStdout: (c) => (out += c), onStderr: (c) => (err += c) },
    );
    assert.equal(r.exitCode, 0, `${script}: ${out}${err}`);
    return out;
  }

  before(async () => {
    await lab.setup();
    await lab.startInternet();
    await openclawImage();
    dataDir = await mkdtemp(join(tmpdir(), 'wd-'));
    t = await openTestControlPlane({ host: lab.rootIp, defaultProfile: 'openclaw' });
    agent = spawnLabAgent(lab, {
      controlPlaneUrl: t.url,
      joinToken: t.joinToken,
      dataDir,
      port: AGENT_PORT,
      env: { WARREN_HOST_NAME: 'lab-host', WARREN_BOOT_TIMEOUT_MS: '180000' },
      onOutput: (c) => {
        agentLog = (agentLog + c).slice(-20_000);
      },
    });
    await until('the host to join', async () =>
      (await admin().hosts.list()).some((h) => h.health === 'healthy'),
    );
    // The shared skill, pushed as an operator would: a package directory of skill folders.
    scratch = await mkdtemp(join(tmpdir(), 'wocl-'));
    const pkg = join(scratch, 'skill-package');
    await mkdir(join(pkg, SKILL), { recursive: true });
    await writeFile(
      join(pkg, SKILL, 'SKILL.md'),
      `---\nname: ${SKILL}\ndescription: A shared skill delivered by Warren.\n---\n# Hello\nSay hello.\n`,
    );
    const cli = { url: t.url, token: t.adminToken, scratch };
    const pushed = await runWarren(cli, ['skill', 'push', pkg, '--name', SKILL, '--version', '1.0.0']);
    assert.equal(pushed.status, 0, pushed.stderr);
    // OpenClaw's gateway holds ~340 MiB once ready, more while it starts. --no-wait: the boot
    // under TCG outlasts the CLI runner's kill timer; the wait is below.
    const created = await runWarren(cli, [
      'tenant',
      'create',
      TENANT,
      '--image-profile',
      'openclaw',
      '--memory',
      '2048',
      '--disk',
      '256',
      '--skill',
      `${SKILL}@1.0.0`,
      '--no-wait',
    ]);
    assert.equal(created.status, 0, created.stderr);
    await until('the tenant to run', async () => (await admin().tenants.get(TENANT)).state === 'running');
    key = (await admin().keys.create({ tenant: TENANT })).token;
    const secrets = await runWarren(cli, ['tenant', 'secret', 'list', TENANT]);
    assert.match(secrets.stdout, /OPENCLAW_GATEWAY_TOKEN/, 'the gateway token is a tenant secret');
  });

  after(async () => {
    await context?.close().catch(() => {});
    forwarder?.close();
    try {
      if (t) await deleteAllTenants(admin());
    } catch (e) {
      process.stderr.write(`cleanup: ${e}\n`);
    }
    await endChild(agent, 'SIGKILL');
    await lab.destroy();
    await t?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    if (scratch) await rm(scratch, { recursive: true, force: true });
    if (profile) await rm(profile, { recursive: true, force: true });
  });

  /** The browser's request to the tenant's origin, sent to the control plane's address. */
  async function onOrigin(
    path: string,
    cookie?: string,
  ): Promise<{ status: number; setCookie: string[]; body: string }> {
    const r = await getWithHost(`${t!.url}${path}`, new URL(origin()).host, cookie ? { cookie } : {});
    return { status: r.status, setCookie: r.headers['set-cookie'] ?? [], body: r.body };
  }

  async function loginLink(): Promise<URL> {
    const login = await fetch(`${t!.url}/v1/sessions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({}),
    });
    assert.equal(login.status, 201, await login.clone().text());
    return new URL(((await login.json()) as { loginUrl: string }).loginUrl);
  }

  test('the gateway starts as the agent user with its state in /workspace, answers /healthz after auth in both forms, and gets ready', async (ctx) => {
    const started = Date.now();
    const healthz = () =>
      fetch(`${t!.url}/t/${TENANT}/dashboard/healthz`, { headers: { authorization: `Bearer ${key}` } });
    await until(
      'the gateway to answer /healthz through the proxy',
      async () => {
        const r = await healthz();
        return r.status === 200 && ((await r.json()) as { ok?: boolean }).ok === true;
      },
      GATEWAY_START_MS,
    );
    ctx.diagnostic(`tenant running to gateway healthy: ${((Date.now() - started) / 1000).toFixed(1)} s`);
    // Live is not ready: under TCG the gateway answers /healthz minutes before it serves its
    // Control UI (plugins, channels and its update check still starting); /readyz says when.
    await until(
      'the gateway to be ready (/readyz through the proxy)',
      async () =>
        (
          await fetch(`${t!.url}/t/${TENANT}/dashboard/readyz`, {
            headers: { authorization: `Bearer ${key}` },
          })
        ).status === 200,
      GATEWAY_START_MS,
    );
    ctx.diagnostic(`tenant running to gateway ready: ${((Date.now() - started) / 1000).toFixed(1)} s`);
    // Without the platform's credentials the proxy refuses before the VM.
    assert.equal((await fetch(`${t!.url}/t/${TENANT}/dashboard/healthz`)).status, 401);
    // On the tenant's own origin, with a session from a login link.
    const link = await loginLink();
    const page = await onOrigin(`${link.pathname}${link.search}`);
    assert.equal(page.status, 200, page.body);
    const cookie = page.setCookie[0]!.split(';')[0]!;
    const onOwnOrigin = await onOrigin('/healthz', cookie);
    assert.equal(onOwnOrigin.status, 200, onOwnOrigin.body);
    assert.equal((JSON.parse(onOwnOrigin.body) as { ok: boolean }).ok, true);
    assert.equal((await onOrigin('/healthz')).status, 401);
    // The gateway runs as the agent user (uid 1000), its state on the data volume.
    // (The gateway renames its process `openclaw-gateway`; this shell is skipped.)
    const ps = await sh(
      'for p in /proc/[0-9]*; do [ $p = /proc/$$ ] && continue; c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); case "$c" in openclaw-gateway*|*openclaw.mjs\\ gateway*) stat -c %u $p;; esac; done',
    );
    assert.deepEqual([...new Set(ps.trim().split(/\s+/))], ['1000'], ps);
    assert.match(
      await sh('stat -c %u /workspace/.openclaw && mountpoint -q /workspace && echo mounted'),
      /^1000\nmounted/,
    );
    // The token (a secret, in tmpfs) is in no file the gateway wrote.
    const token = (await sh('cat /run/warren/secrets/OPENCLAW_GATEWAY_TOKEN')).trim();
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
    assert.match(await sh('stat -f -c %T /run/warren/secrets'), /tmpfs/);
    const leaked = await sh(`grep -rl ${token} /workspace /run/warren/openclaw /tmp 2>/dev/null || true`);
    assert.equal(leaked.trim(), '');
  });

  test('Chromium loads the Control UI at the tenant’s dashboard origin, connects its WebSocket and lists the shared skill', async (ctx) => {
    // Chromium resolves *.localhost to loopback itself; the control plane listens on the lab's
    // veth, so loopback's same port leads there.
    const port = Number(new URL(t!.url).port);
    forwarder = createServer((client) => {
      const upstream = connect(port, lab.rootIp);
      client.pipe(upstream).pipe(client);
      client.on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      forwarder!.once('error', reject);
      forwarder!.listen(port, '127.0.0.1', resolve);
    });
    profile = await mkdtemp(join(tmpdir(), 'warren-chromium-'));
    context = await launchChromiumProfile(profile);
    const page = await context.newPage();
    const frames: string[] = [];
    const sockets: PageSocket[] = [];
    page.on('websocket', (ws) => {
      sockets.push(ws);
      ws.on('framereceived', (f) => frames.push(String(f.payload)));
    });
    // On failure: what the page showed and the gateway said, and a screenshot.
    const explain = async (e: Error) => {
      await mkdir(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: join(ARTIFACTS, 'openclaw-control-ui-failed.png') }).catch(() => {});
      const text = ((await page.textContent('body').catch(() => '')) ?? '')
        .replace(/\s+/g, ' ')
        .slice(0, 1500);
      throw new Error(`${e.message}\npage: ${text}\nframes: ${frames.slice(-6).join('\n').slice(0, 3000)}`);
    };
    // Warren's auth: a one-time login link sets this origin's session cookie; its page then
    // opens the Control UI with the gateway's token in the fragment (never sent to a server).
    await page.goto((await loginLink()).href);
    await page.waitForURL((u) => u.origin === origin() && u.pathname === '/');
    // A new browser is paired once by the tenant's operator, in the guest.
    const pending = await until(
      'the Control UI to ask for pairing',
      async () => {
        const text = (await page.textContent('body').catch(() => '')) ?? '';
        const m = /openclaw devices approve ([0-9a-f-]{36})/.exec(text);
        if (m) return m[1]!;
        return frames.some((f) => f.includes('"ok":true') && f.includes('hello')) ? 'paired' : undefined;
      },
      120_000,
    ).catch(explain);
    if (pending !== 'paired') {
      const approving = Date.now();
      await sh(`openclaw devices approve ${pending}`, 300_000);
      ctx.diagnostic(
        `openclaw devices approve in the guest: ${((Date.now() - approving) / 1000).toFixed(1)} s`,
      );
    }
    await until(
      'the Control UI’s WebSocket to connect',
      async () =>
        sockets.some((s) => !s.isClosed() && s.url().startsWith(origin().replace('http', 'ws'))) &&
        frames.some((f) => /"type":"res".*"ok":true/.test(f)),
      180_000,
    ).catch(explain);
    await page.goto(`${origin()}/skills`);
    await until(
      `the gateway to list the shared skill ${SKILL}`,
      async () => ((await page.textContent('body').catch(() => '')) ?? '').includes(SKILL),
      180_000,
    ).catch(explain);
    // The shared skill's card in view for the screenshot (the list is long and alphabetical).
    await page.getByText(SKILL).first().scrollIntoViewIfNeeded({ timeout: 30_000 });
    await mkdir(ARTIFACTS, { recursive: true });
    const shot = join(ARTIFACTS, 'openclaw-control-ui.png');
    await page.screenshot({ path: shot, fullPage: false });
    ctx.diagnostic(`screenshot: ${shot}`);
  });
});
