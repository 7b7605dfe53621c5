/**
 * Issue 15, acceptance 1 and 2: the web console in a real browser (Debian's Chromium, driven by
 * playwright-core; never a browser download) against a real control plane in this process with
 * a fake host agent (test/helpers/api.ts). The admin signs in, sees hosts and tenants, creates
 * and stops a tenant and sees its state change without a reload, uploads and downloads a file;
 * a tenant signs in and sees only its own tenant. axe-core runs over every main page, at
 * 1280x800 and at phone width: no critical violation. A page of a sibling origin (same site, so
 * SameSite does not stop the cookie) tries to drive the console's API with the visitor's
 * session: refused. Screenshots land in test-artifacts/console/.
 *
 * The terminal needs a real VM: test/vm/console-terminal.test.ts.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { vmIdOfTenant } from '@warren/protocol';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import {
  call,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { CHROMIUM_MISSING, launchChromium } from '../helpers/browser.ts';
import { until } from '../helpers/until.ts';

const ARTIFACTS = join(import.meta.dirname, '../../test-artifacts/console');
const CONSOLE_DIST = join(import.meta.dirname, '../../apps/console/dist/index.html');
const AXE = join(import.meta.dirname, '../../node_modules/axe-core/axe.min.js');
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };

interface AxeResult {
  violations: { id: string; impact: string | null; help: string; nodes: { target: unknown[] }[] }[];
}

const skip = CHROMIUM_MISSING
  ? CHROMIUM_MISSING
  : !existsSync(CONSOLE_DIST)
    ? 'the console is not built: run scripts/install-deps.sh (it builds apps/console)'
    : false;

describe('the web console in a real browser', { skip }, () => {
  let t: TestControlPlane;
  let agent: FakeAgent;
  let browser: Browser;
  let attacker: Server;
  let base = '';
  let evil = '';
  const keys: Record<string, string> = {};
  let axeSource = '';

  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    axeSource = await readFile(AXE, 'utf8');
    t = await openTestControlPlane();
    agent = await new FakeAgent('host-one', { vcpus: 8, memoryMiB: 16384, diskMiB: 200_000 }).start(
      t.url,
      t.joinToken,
      200,
    );
    for (const name of ['alpha', 'beta']) keys[name] = (await createTenantWithKey(t, { name })).key.token;
    await until('both tenants to run', async () => {
      const list = await call(t.url, 'GET', '/v1/tenants', { token: t.adminToken });
      return list.body.tenants.every((x: { state: string }) => x.state === 'running');
    });
    // The console on a name under `warren.localhost` (Chromium resolves *.localhost to
    // loopback), and the attacker on a sibling name: same site, so SameSite=Strict lets the
    // visitor's cookie go along and only the console's own checks stand in the way.
    base = `http://console.warren.localhost:${new URL(t.url).port}`;
    attacker = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' }).end(attackPage(base, req.url ?? '/'));
    });
    await new Promise<void>((r) => attacker.listen(0, '127.0.0.1', r));
    evil = `http://evil.warren.localhost:${(attacker.address() as AddressInfo).port}`;
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await agent?.stop();
    await t?.close();
    attacker?.closeAllConnections();
    attacker?.close();
  });

  async function signIn(context: BrowserContext, token: string): Promise<Page> {
    const page = await context.newPage();
    await page.goto(`${base}/console/`);
    await page.getByLabel('Admin token or tenant key').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('button', { name: 'Sign out' }).waitFor();
    return page;
  }

  async function axe(page: Page, name: string): Promise<void> {
    await page.evaluate(axeSource);
    const result = (await page.evaluate('axe.run(document, { resultTypes: ["violations"] })')) as AxeResult;
    const critical = result.violations.filter((v) => v.impact === 'critical');
    assert.deepEqual(
      critical.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => JSON.stringify(n.target)).join(', ')})`),
      [],
      `critical accessibility violations on ${name}`,
    );
  }

  async function shoot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    // Nothing wider than the window: wide tables scroll inside their own box.
    const [scroll, width] = (await page.evaluate(
      '[document.documentElement.scrollWidth, window.innerWidth]',
    )) as number[];
    assert.ok(scroll! <= width!, `${name}: the page is ${scroll} px wide in a ${width} px window`);
  }

  const tenant = async (name: string) =>
    (await call(t.url, 'GET', `/v1/tenants/${name}`, { token: t.adminToken })).body;

  test('admin: signs in, sees hosts and tenants, creates and stops a tenant live, moves files; every page passes axe', async () => {
    const context = await browser.newContext({ viewport: DESKTOP, acceptDownloads: true });
    try {
      const page = await context.newPage();
      await page.goto(`${base}/console/`);
      await page.getByLabel('Admin token or tenant key').waitFor();
      await axe(page, 'sign-in');
      await shoot(page, 'sign-in');
      await page.close();

      const admin = await signIn(context, t.adminToken);
      // The session cookie: HttpOnly, SameSite=Strict, the console's path only, host-only.
      const [cookie, ...more] = (await context.cookies()).filter((c) => c.name === 'warren_console');
      assert.equal(more.length, 0);
      assert.equal(cookie!.httpOnly, true);
      assert.equal(cookie!.sameSite, 'Strict');
      assert.equal(cookie!.path, '/console/');
      assert.equal(cookie!.domain, 'console.warren.localhost');
      assert.notEqual(cookie!.value, t.adminToken);

      // Tenants, with their state, host and image.
      await admin.locator('tr[data-tenant="alpha"]').getByText('running').waitFor();
      await admin.locator('tr[data-tenant="beta"]').getByText('host-one').waitFor();
      await admin.getByLabel('Search').fill('alp');
      await until(
        'the search to keep alpha only',
        async () => (await admin.locator('tbody tr').count()) === 1,
      );
      await admin.getByLabel('Search').fill('');
      await axe(admin, 'tenants');
      await shoot(admin, 'tenants');

      // Hosts: capacity bars, drain.
      await admin.getByRole('link', { name: 'Hosts' }).click();
      await admin.getByRole('heading', { name: /host-one/ }).waitFor();
      assert.equal(await admin.getByRole('progressbar').count(), 3);
      await axe(admin, 'hosts');
      await shoot(admin, 'hosts');
      await admin.getByRole('button', { name: 'Drain host-one' }).click();
      await admin.getByRole('button', { name: 'Undrain host-one' }).waitFor();
      assert.equal(
        (await call(t.url, 'GET', '/v1/hosts/host-one', { token: t.adminToken })).body.draining,
        true,
      );
      await admin.getByRole('button', { name: 'Undrain host-one' }).click();
      await admin.getByRole('button', { name: 'Drain host-one' }).waitFor();

      await admin.getByRole('link', { name: 'Operations' }).click();
      await admin.getByRole('heading', { name: 'Operations' }).waitFor();
      await axe(admin, 'operations');
      await shoot(admin, 'operations');
      await admin.getByRole('link', { name: 'Audit log' }).click();
      await admin.getByRole('cell', { name: 'host.drain' }).first().waitFor();
      await axe(admin, 'audit');
      await shoot(admin, 'audit');

      // Live updates come from the event stream (`GET /v1/events`) once the control plane has
      // it; until then the console polls, and says so (the dot's title).
      const openapi = await call(t.url, 'GET', '/v1/openapi.json');
      if (openapi.body.paths['/v1/events']) await admin.getByTitle('live').waitFor();
      // Create a tenant; its state changes arrive without a reload (a marker on the page's
      // window would be gone after one).
      await admin.getByRole('link', { name: 'Tenants' }).click();
      await admin.evaluate('window.__noReload = true');
      await admin.getByLabel('New tenant').fill('gamma');
      await admin.getByRole('button', { name: 'Create' }).click();
      await admin.locator('tr[data-tenant="gamma"]').getByTestId('state').getByText('running').waitFor();
      await admin.getByRole('link', { name: 'gamma' }).click();
      await admin.getByTestId('tenant-state').getByText('running').waitFor();
      await admin.getByRole('button', { name: 'Stop' }).click();
      await admin.getByTestId('tenant-state').getByText('stopped').waitFor();
      assert.equal((await tenant('gamma')).state, 'stopped');
      // And a change made elsewhere (the API, not this page) shows up too.
      const started = await call(t.url, 'POST', '/v1/tenants/gamma/start', { token: t.adminToken });
      assert.equal(started.status, 202, started.text);
      await admin.getByTestId('tenant-state').getByText('running').waitFor();
      assert.equal(await admin.evaluate('window.__noReload'), true);

      // Files: upload with progress, download.
      await admin.goto(`${base}/console/tenants/alpha`);
      await admin.getByTestId('tenant-state').getByText('running').waitFor();
      await axe(admin, 'tenant');
      await shoot(admin, 'tenant-admin');
      const content = `hello from the console ${Date.now()}\n`;
      await admin.getByLabel('Upload to /workspace').setInputFiles({
        name: 'hello.txt',
        mimeType: 'text/plain',
        buffer: Buffer.from(content),
      });
      await admin.getByRole('button', { name: 'Upload', exact: true }).click();
      await admin.getByRole('status').getByText('uploaded /workspace/hello.txt').waitFor();
      const alpha = await tenant('alpha');
      assert.equal(agent.files.get(`${vmIdOfTenant(alpha.id)}:/workspace/hello.txt`), content);
      await admin.getByLabel('Download path').fill('/workspace/hello.txt');
      const [download] = await Promise.all([
        admin.waitForEvent('download'),
        admin.getByRole('button', { name: 'Download', exact: true }).click(),
      ]);
      assert.equal(download.suggestedFilename(), 'hello.txt');
      assert.equal(await readFile((await download.path())!, 'utf8'), content);

      // Phone width: the same pages, still usable and accessible.
      await admin.setViewportSize(PHONE);
      await shoot(admin, 'tenant-admin-phone');
      await axe(admin, 'tenant (phone)');
      await admin.goto(`${base}/console/hosts`);
      await admin.getByRole('heading', { name: /host-one/ }).waitFor();
      await shoot(admin, 'hosts-phone');
      await axe(admin, 'hosts (phone)');
      await admin.goto(`${base}/console/tenants`);
      await admin.locator('tr[data-tenant="alpha"]').waitFor();
      await shoot(admin, 'tenants-phone');

      // Sign-out ends the session in the store, not only in the browser.
      const value = cookie!.value;
      await admin.getByRole('button', { name: 'Sign out' }).click();
      await admin.getByLabel('Admin token or tenant key').waitFor();
      const reuse = await fetch(`${t.url}/console/api/session`, {
        headers: { cookie: `warren_console=${value}` },
      });
      assert.equal(reuse.status, 401);
    } finally {
      await context.close();
    }
  });

  test('a tenant sees only its own tenant; another tenant’s URL shows not-found', async () => {
    const context = await browser.newContext({ viewport: DESKTOP });
    try {
      const page = await signIn(context, keys.alpha!);
      await page.getByRole('heading', { name: /alpha/ }).waitFor();
      await page.getByTestId('tenant-state').getByText('running').waitFor();
      assert.equal(await page.getByRole('link', { name: 'Hosts' }).count(), 0);
      await axe(page, 'tenant (tenant key)');
      await shoot(page, 'tenant-self');
      await page.goto(`${base}/console/tenants/beta`);
      await page.getByRole('heading', { name: 'Not found' }).waitFor();
      await shoot(page, 'tenant-other-not-found');
      // The console's API has the tenant key's scope: one tenant in the list, hosts forbidden.
      const seen = (await page.evaluate(`(async () => {
        const s = await (await fetch('/console/api/session')).json();
        const h = { 'x-warren-csrf': s.csrfToken };
        const list = await (await fetch('/console/api/v1/tenants', { headers: h })).json();
        const hosts = await fetch('/console/api/v1/hosts', { headers: h });
        const beta = await fetch('/console/api/v1/tenants/beta', { headers: h });
        return { names: list.tenants.map((x) => x.name), hosts: hosts.status, beta: beta.status };
      })()`)) as { names: string[]; hosts: number; beta: number };
      assert.deepEqual(seen, { names: ['alpha'], hosts: 403, beta: 404 });
    } finally {
      await context.close();
    }
  });

  test('a sibling origin’s page cannot drive the console with the visitor’s session (CSRF)', async () => {
    const context = await browser.newContext({ viewport: DESKTOP });
    try {
      await signIn(context, t.adminToken);
      const before = (await tenant('alpha')).desiredState;
      assert.equal(before, 'running');
      const page = await context.newPage();
      await page.goto(`${evil}/`);
      const outcome = await until('the attack page to finish', async () => {
        const text = await page
          .locator('#done')
          .textContent({ timeout: 100 })
          .catch(() => null);
        return text ? (JSON.parse(text) as Record<string, string>) : undefined;
      });
      // What the page could read: nothing (no CORS), the WebSocket refused.
      assert.equal(outcome.session, 'blocked', JSON.stringify(outcome));
      assert.equal(outcome.ws, 'refused', JSON.stringify(outcome));
      // A form post: a top-level navigation, which SameSite=Strict lets through on the same site
      // (refused whatever its body: a form cannot send JSON, nor the CSRF header).
      await page.goto(`${evil}/form`);
      await page.waitForURL(`${base}/console/api/v1/tenants/alpha/stop`);
      assert.match((await page.textContent('body')) ?? '', /"error"/);
      // Nothing happened: alpha still runs; the audit log shows the refused stop (FORBIDDEN:
      // the cookie went along, the CSRF and Origin checks refused it), and no other.
      assert.equal((await tenant('alpha')).desiredState, 'running');
      const audit = await call(t.url, 'GET', '/v1/audit?action=tenant.stop', { token: t.adminToken });
      const stops = audit.body.events.filter((e: { target: string }) => e.target === 'alpha');
      assert.ok(stops.length >= 1, JSON.stringify(audit.body));
      for (const e of stops) assert.equal(e.result, 'FORBIDDEN', JSON.stringify(e));
    } finally {
      await context.close();
    }
  });
});

/**
 * The attacker's page: a fetch POST with the cookie (a "simple" request: no preflight), a read
 * of the console's session (for its CSRF token), a WebSocket to the terminal, and (at /form) an
 * auto-submitting form.
 */
function attackPage(base: string, path: string): string {
  if (path === '/form') {
    return `<!doctype html><form id="f" method="POST" action="${base}/console/api/v1/tenants/alpha/stop"></form><script>document.getElementById('f').submit()</script>`;
  }
  return `<!doctype html><title>evil</title><p id="out"></p><script>
  (async () => {
    const out = {};
    try {
      await fetch('${base}/console/api/v1/tenants/alpha/stop', { method: 'POST', credentials: 'include', mode: 'no-cors' });
      out.post = 'sent';
    } catch (e) { out.post = 'blocked'; }
    try {
      const r = await fetch('${base}/console/api/session', { credentials: 'include' });
      out.session = 'read:' + (await r.text());
    } catch (e) { out.session = 'blocked'; }
    out.ws = await new Promise((resolve) => {
      const ws = new WebSocket('${base.replace('http', 'ws')}/console/api/v1/tenants/alpha/terminal');
      ws.onopen = () => resolve('opened');
      ws.onerror = () => resolve('refused');
    });
    const done = document.createElement('p');
    done.id = 'done';
    done.textContent = JSON.stringify(out);
    document.body.append(done);
  })();
  </script>`;
}
