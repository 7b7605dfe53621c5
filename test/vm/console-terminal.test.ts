/**
 * Issue 15, acceptance 1 (the terminal step): the console's terminal in a real browser, into a
 * real VM. A real control plane in this process, the real host agent as a process with the
 * minimal test image, headless Chromium signed in with the tenant's key: it opens the
 * terminal, runs a command and reads its output (UTF-8 too), interrupts a `sleep` with Ctrl-C,
 * sees the shell's window size follow the browser's, and moves files with the file browser
 * (list, upload, download) in the same guest. One VM boot.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { call, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { CHROMIUM_MISSING, launchChromium } from '../helpers/browser.ts';
import { endChild } from '../helpers/daemons.ts';
import { minimalImage, REPO_ROOT, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { until as waitUntil } from '../helpers/until.ts';

const ARTIFACTS = join(REPO_ROOT, 'test-artifacts/console');
const skip = CHROMIUM_MISSING
  ? CHROMIUM_MISSING
  : !existsSync(join(REPO_ROOT, 'apps/console/dist/index.html'))
    ? 'the console is not built: run scripts/install-deps.sh (it builds apps/console)'
    : process.getuid?.() !== 0
      ? 'VMs need root'
      : false;

describe('the console terminal into a real VM', { skip, timeout: 400_000 }, () => {
  let t: TestControlPlane | undefined;
  let agent: ChildProcess | undefined;
  let agentLog = '';
  let dataDir = '';
  let browser: Browser | undefined;
  let key = '';

  const until = <T>(what: string, check: () => Promise<T | false | undefined>, ms = 180_000) =>
    waitUntil(what, check, ms, 250).catch((e: Error) => {
      throw new Error(`${e.message}\n${agentLog.slice(-3000)}`);
    });

  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    await minimalImage();
    dataDir = await mkdtemp(join(tmpdir(), 'wterm-'));
    t = await openTestControlPlane({ defaultProfile: 'minimal' });
    agent = spawn(join(REPO_ROOT, 'scripts', 'node.sh'), [join(REPO_ROOT, 'apps/host-agent/src/main.ts')], {
      env: {
        ...process.env,
        WARREN_DATA_DIR: dataDir,
        WARREN_IMAGES_DIR: TEST_IMAGES_DIR,
        WARREN_CONTROL_PLANE_URL: t.url,
        WARREN_JOIN_TOKEN: t.joinToken,
        WARREN_AGENT_LISTEN: '127.0.0.1:0',
        WARREN_HOST_NAME: 'term-host',
        WARREN_HEARTBEAT_MS: '300',
        WARREN_BOOT_TIMEOUT_MS: '120000',
        WARREN_NETWORK: 'off',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    agent.stdout!.on('data', (b) => (agentLog = (agentLog + b).slice(-20_000)));
    agent.stderr!.on('data', (b) => (agentLog = (agentLog + b).slice(-20_000)));
    await until('the host joins and reports its images', async () => {
      const hosts = await call(t!.url, 'GET', '/v1/hosts', { token: t!.adminToken });
      return hosts.body.hosts?.[0]?.images?.length > 0;
    });
    const created = await call(t.url, 'POST', '/v1/tenants', {
      token: t.adminToken,
      body: { name: 'term', memoryMiB: 256, diskMiB: 256 },
    });
    assert.equal(created.status, 202, created.text);
    key = (await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: 'term' } })).body
      .token;
    await until('the tenant runs', async () => {
      const r = await call(t!.url, 'GET', '/v1/tenants/term', { token: t!.adminToken });
      return r.body.state === 'running';
    });
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    if (t) {
      // Deleted through the API, so the agent destroys the VM before it stops.
      await call(t.url, 'DELETE', '/v1/tenants/term', { token: t.adminToken }).catch(() => {});
      await waitUntil(
        'the VM is gone',
        async () => (await call(t!.url, 'GET', '/v1/tenants/term', { token: t!.adminToken })).status === 404,
        60_000,
      ).catch(() => {});
    }
    await endChild(agent, 'SIGTERM');
    await t?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  /** What the terminal shows (xterm.js renders each row as an element: innerText keeps the line breaks). */
  // biome-ignore lint/performance/useDomNodeTextContent: textContent would run the rows together
  const screen = (page: Page) => page.locator('.xterm-rows').innerText();

  /** Types a command once the shell's prompt is the last thing on screen, then waits for `expect`. */
  async function run(page: Page, command: string, expect: RegExp): Promise<string> {
    await until('the prompt', async () => /# $/.test(`${(await screen(page)).trimEnd()} `), 60_000);
    await page.keyboard.type(command);
    await page.keyboard.press('Enter');
    return await until(
      `the terminal to show ${expect}`,
      async () => {
        const text = await screen(page);
        return expect.test(text) ? text : undefined;
      },
      60_000,
    );
  }

  test('open the terminal, run commands, Ctrl-C, resize; list, upload and download files', async () => {
    const started = Date.now();
    const context = await browser!.newContext({
      viewport: { width: 1280, height: 800 },
      acceptDownloads: true,
    });
    try {
      const page = await context.newPage();
      await page.goto(`${t!.url}/console/`);
      await page.getByLabel('Admin token or tenant key').fill(key);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByTestId('tenant-state').getByText('running').waitFor();
      await page.getByRole('button', { name: 'Open terminal' }).click();
      await page.getByTestId('terminal-status').getByText('connected').waitFor({ timeout: 60_000 });
      await page.locator('.xterm').click();

      await run(page, 'echo "out-$((6*7)) héllo ✓"', /out-42 héllo ✓/);
      const size1 = await run(page, 'stty size', /\n(\d+) (\d+)\s*\n/);
      const [, rows1, cols1] = /\n(\d+) (\d+)\s*\n/.exec(size1)!;
      // Ctrl-C interrupts the foreground command (the guest's line discipline sends SIGINT).
      // Pressed once the command runs: a ^C typed while the shell still edits the line would
      // only cancel that line.
      await run(page, 'echo started; sleep 600', /\nstarted\s*\n/);
      await page.keyboard.press('Control+C');
      await run(page, 'echo "after-$?"', /after-130/);
      await page.screenshot({ path: join(ARTIFACTS, 'terminal.png'), fullPage: true });

      // Narrower window: xterm refits, the console sends the new size, the shell sees it.
      await page.setViewportSize({ width: 390, height: 844 });
      // Each round reads what the previous round's `stty size` printed, then asks again.
      const size2 = await waitUntil(
        'the shell sees fewer columns',
        async () => {
          const all = [...(await screen(page)).matchAll(/\n(\d+) (\d+)\s*(?=\n)/g)];
          const last = all.at(-1);
          if (last && Number(last[2]) < Number(cols1)) return last;
          await page.keyboard.type('stty size');
          await page.keyboard.press('Enter');
          return undefined;
        },
        30_000,
        1_000,
      );
      assert.ok(Number(size2[2]) > 10, `${size2[0]} (was ${rows1} ${cols1})`);
      await page.screenshot({ path: join(ARTIFACTS, 'terminal-phone.png'), fullPage: true });

      // The file browser against the real guest: a file the shell wrote is listed; an upload
      // lands where the shell reads it; a listed file downloads.
      await page.setViewportSize({ width: 1280, height: 800 });
      await run(page, 'echo from-the-shell > /workspace/shell.txt; echo written', /\nwritten\s*\n/);
      await page.getByRole('button', { name: 'List' }).click();
      const listing = page.getByRole('list', { name: 'directory entries' });
      await listing.getByRole('button', { name: 'shell.txt' }).waitFor();
      await page.getByLabel('Upload to /workspace').setInputFiles({
        name: 'up.txt',
        mimeType: 'text/plain',
        buffer: Buffer.from('uploaded ✓\n'),
      });
      await page.getByRole('button', { name: 'Upload', exact: true }).click();
      await page.getByRole('status').getByText('uploaded /workspace/up.txt').waitFor({ timeout: 60_000 });
      await listing.getByRole('button', { name: 'up.txt' }).waitFor({ timeout: 60_000 });
      const [download] = await Promise.all([
        page.waitForEvent('download'),
        listing.getByRole('button', { name: 'shell.txt' }).click(),
      ]);
      assert.equal(await readFile((await download.path())!, 'utf8'), 'from-the-shell\n');
      await page.locator('.xterm').click();
      await run(page, 'cat /workspace/up.txt', /\nuploaded ✓\s*\n/);
      await page.screenshot({ path: join(ARTIFACTS, 'terminal-files.png'), fullPage: true });

      const audit = await call(t!.url, 'GET', '/v1/audit?action=tenant.terminal', { token: t!.adminToken });
      assert.ok(
        audit.body.events.some(
          (e: { target: string; result: string }) => e.target === 'term' && e.result === 'ok',
        ),
      );
      console.log(`# terminal test took ${Date.now() - started} ms after the VM booted`);
    } finally {
      await context.close();
    }
  });
});
