/**
 * Tenant secrets on the whole platform (issue 14, acceptance 1): the control plane and a host
 * agent as separate processes on one data directory, a real QEMU microVM. A secret set through
 * the API is readable in the guest, in a tmpfs only, by the workspace user and nobody else;
 * changes in place when set again or removed; is there again after a VM restart, a snapshot and
 * a revert, and a host agent restart; and its value (raw or base64) is in no file under the
 * data directory (control plane, host agent, the VM's directory with its disks, console log and
 * snapshot memory), no image, and no line either daemon printed.
 *
 * One tenant, one VM, two boots (create, and the restart); everything else rides on them.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { WarrenClient } from '@warren/sdk';
import { deleteAllTenants, endChild, pidsMatching, spawnDaemon } from '../helpers/daemons.ts';
import { freePort } from '../helpers/free-port.ts';
import { minimalImage, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const TENANT = 'sec';
const FILE = '/run/warren/secrets/API_TOKEN';
/** Made at run time, so no image or earlier run's file holds them. */
const values = Array.from({ length: 4 }, (_, i) => `wrn-sv${i}-${randomBytes(12).toString('hex')}`);
const [V1, V2, V3, V4] = values as [string, string, string, string];

let dataDir = '';
let url = '';
let cp: ChildProcess | undefined;
let agent: ChildProcess | undefined;
let adminToken = '';
/** Everything both daemons printed, whole (grepped for the values at the end). */
const output: Buffer[] = [];

function daemon(which: 'control-plane' | 'host-agent', env: Record<string, string>): ChildProcess {
  return spawnDaemon(which, { dataDir, env, onOutput: (b) => output.push(b) });
}

function startAgent(): ChildProcess {
  return daemon('host-agent', {
    WARREN_CONTROL_PLANE_URL: url,
    WARREN_JOIN_TOKEN_FILE: join(dataDir, 'control-plane', 'join-token'),
    WARREN_AGENT_LISTEN: '127.0.0.1:0',
    WARREN_HEARTBEAT_MS: '500',
    WARREN_HOST_NAME: 'secrets-host',
    WARREN_BOOT_TIMEOUT_MS: '120000',
    WARREN_VMM: 'qemu',
  });
}

const stop = endChild;
const qemuPids = () => pidsMatching(`${dataDir}/vms/`);

const client = () => new WarrenClient({ url, token: adminToken });

/** Runs a shell script in the tenant's guest as `user` (root when absent). */
async function sh(script: string, user?: string | number, more: { secretEnv?: boolean } = {}) {
  let stdout = '';
  let stderr = '';
  const exit = await client().tenants.exec(
    TENANT,
    // cwd `/`: nobody's home does not exist.
    { argv: ['sh', '-c', script], cwd: '/', ...(user === undefined ? {} : { user }), ...more },
    { onStdout: (b) => (stdout += b), onStderr: (b) => (stderr += b) },
  );
  return { stdout, stderr, code: exit.exitCode };
}

/** The secret file's content as the workspace user reads it ('' when absent). */
async function readSecret(name = 'API_TOKEN'): Promise<string> {
  return (await sh(`cat /run/warren/secrets/${name} 2>/dev/null`, 'agent')).stdout;
}

/** Whether the file holds any of `needles`: one streamed read (memory files and disks are large). */
function holdsAny(path: string, needles: Buffer[]): Promise<boolean> {
  const keep = Math.max(...needles.map((n) => n.length));
  return new Promise((resolve, reject) => {
    let tail = Buffer.alloc(0);
    const s = createReadStream(path, { highWaterMark: 4 * 1024 * 1024 });
    s.on('data', (chunk) => {
      const window = Buffer.concat([tail, chunk as Buffer]);
      if (needles.some((n) => window.includes(n))) {
        s.destroy();
        resolve(true);
      }
      tail = window.subarray(Math.max(0, window.length - keep));
    });
    s.on('error', reject);
    s.on('close', () => resolve(false));
  });
}

async function wait(op: { operation: { id: string } }): Promise<void> {
  await client().operations.wait(op.operation.id, { timeoutMs: 300_000 });
}

before(async () => {
  await minimalImage();
  dataDir = await mkdtemp(join(tmpdir(), 'wsec-'));
  url = `http://127.0.0.1:${await freePort()}`;
  cp = daemon('control-plane', {
    WARREN_API_PORT: new URL(url).port,
    WARREN_DEFAULT_PROFILE: 'minimal',
    WARREN_HEARTBEAT_TIMEOUT_MS: '30000',
    WARREN_BACKUP_DRILL_INTERVAL_MS: '0',
  });
  await until('the control plane', async () => (await fetch(`${url}/v1/health`)).ok);
  adminToken = (await readFile(join(dataDir, 'control-plane', 'admin-token'), 'utf8')).trim();
  agent = startAgent();
  await until('the host to join', async () =>
    (await client().hosts.list()).some((h) => h.health === 'healthy'),
  );
});

after(async () => {
  try {
    await deleteAllTenants(client());
  } catch {}
  await stop(agent, 'SIGKILL');
  await stop(cp, 'SIGKILL');
  for (const pid of await qemuPids()) process.kill(pid, 'SIGKILL');
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('tenant secrets on a real VM, through the whole platform', { timeout: 900_000 }, () => {
  afterEach((t) => {
    // What the daemons said, to see why a step did not happen (a value in it fails the test anyway).
    if ((t as { passed?: boolean }).passed === false)
      process.stderr.write(`# daemon output (tail):\n${Buffer.concat(output).toString().slice(-8000)}\n`);
  });

  test('set through the API: in the guest tmpfs only, in place on change, again after restart, revert and agent restart; in no file, image or log', async () => {
    const started = Date.now();
    // This checkout's image: the newest minimal image in the shared store may be another
    // checkout's, with a guest agent that does not know secrets.
    const image = await minimalImage();
    await wait(await client().tenants.create({ name: TENANT, image, memoryMiB: 256, diskMiB: 64 }));

    // Set while running: delivered within a heartbeat or two, readable by the workspace user.
    const set1 = await client().secrets.set(TENANT, 'API_TOKEN', V1);
    assert.equal(set1.version, 1);
    assert.deepEqual(Object.keys(set1).sort(), ['createdAt', 'name', 'updatedAt', 'version']);
    await until('the secret in the guest', async () => (await readSecret()) === V1, 60_000);

    // A tmpfs of its own, root:agent 0440 files in a 0750 directory; nobody else reads them.
    const mounts = await sh('grep " /run/warren/secrets " /proc/mounts');
    assert.match(mounts.stdout, /^tmpfs \/run\/warren\/secrets tmpfs /, mounts.stdout);
    const modes = await sh(`stat -c '%a %u %g' /run/warren/secrets ${FILE}`);
    assert.equal(modes.stdout, '750 0 1000\n440 0 1000\n');
    const other = await sh(`cat ${FILE}`, 'nobody');
    assert.notEqual(other.code, 0, 'another user read the secret');
    assert.equal(other.stdout, '');
    // Files only by default: no environment variable carries it. An exec that asks gets it in
    // its environment as well; the request's own env still wins.
    assert.equal((await sh('env | grep -c wrn-sv || true', 'agent')).stdout.trim(), '0');
    assert.equal((await sh('printf %s "$API_TOKEN"', 'agent', { secretEnv: true })).stdout, V1);
    let own = '';
    const ownExit = await client().tenants.exec(
      TENANT,
      { argv: ['sh', '-c', 'printf %s "$API_TOKEN"'], env: { API_TOKEN: 'mine' }, secretEnv: true },
      { onStdout: (b) => (own += b) },
    );
    assert.deepEqual([ownExit.exitCode, own], [0, 'mine']);

    // Changed in place: a new version replaces the file's content; a removed secret's file goes.
    await client().secrets.set(TENANT, 'OTHER', V2);
    await until('the second secret', async () => (await readSecret('OTHER')) === V2, 60_000);
    const set3 = await client().secrets.set(TENANT, 'API_TOKEN', V3);
    assert.equal(set3.version, 2);
    await until('the new version in place', async () => (await readSecret()) === V3, 60_000);
    await client().secrets.remove(TENANT, 'OTHER');
    await until(
      'the removed secret gone',
      async () => (await sh('ls -A /run/warren/secrets')).stdout === 'API_TOKEN\n',
      60_000,
    );
    const listed = await client().secrets.list(TENANT);
    assert.deepEqual(
      listed.map((s) => [s.name, s.version]),
      [['API_TOKEN', 2]],
    );
    assert.ok(!JSON.stringify(listed).includes('wrn-sv'), 'a value in the list');

    // A restart of the VM (a new boot): delivered again at start.
    await wait(await client().tenants.stop(TENANT));
    await wait(await client().tenants.start(TENANT));
    await until('the secret after a restart', async () => (await readSecret()) === V3, 60_000);

    // A snapshot is taken without it (wiped first), then it is back; after a revert too.
    await client().snapshots.create(TENANT, { name: 'with-secret' });
    assert.equal(await readSecret(), V3, 'delivered again after the snapshot');
    await client().snapshots.revert(TENANT, 'with-secret');
    await until('the secret after a revert', async () => (await readSecret()) === V3, 60_000);

    // A host agent restart: the VM runs on with its secrets; the new agent, which holds none
    // yet, fetches them, and a change after it arrives in place.
    await stop(agent, 'SIGTERM');
    agent = startAgent();
    // The new agent listens on another port: exec works once its heartbeat told the control plane.
    await until('the secret readable through the new agent', async () => (await readSecret()) === V3, 60_000);
    await client().secrets.set(TENANT, 'API_TOKEN', V4);
    await until('the change after an agent restart', async () => (await readSecret()) === V4, 60_000);

    // No value, raw or base64, in any file under the data directory (control plane database
    // and WAL, host agent records, the VM's disks, console log and snapshot memory), any image,
    // or anything either daemon printed.
    const needles = values.flatMap((v) => [Buffer.from(v), Buffer.from(Buffer.from(v).toString('base64'))]);
    // The check finds what it looks for: a planted copy is found, then removed.
    const planted = join(dataDir, 'planted');
    await writeFile(planted, `x${Buffer.from(V2).toString('base64')}x`);
    assert.equal(await holdsAny(planted, needles), true, 'the grep misses a planted value');
    await rm(planted);
    for (const root of [dataDir, TEST_IMAGES_DIR]) {
      for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
        if (!entry.isFile()) continue;
        const path = join(entry.parentPath, entry.name);
        const holds = await holdsAny(path, needles).catch((e: NodeJS.ErrnoException) => {
          if (e.code === 'ENOENT') return false; // a temporary file of another test's image build
          throw e;
        });
        assert.equal(holds, false, `${path} holds a secret value`);
      }
    }
    const printed = Buffer.concat(output);
    for (const needle of needles) assert.equal(printed.includes(needle), false, 'a daemon printed a value');
    assert.ok(printed.length > 0, 'the daemons printed nothing at all: the check would be empty');
    console.log(
      `# secrets VM test: ${Math.round((Date.now() - started) / 1000)} s after the platform was up`,
    );
  });
});
