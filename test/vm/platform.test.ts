/**
 * The whole platform, as users run it: the control plane and a host agent as separate
 * processes on one data directory, real QEMU microVMs, and the `warren` CLI finding the local
 * API and admin token by itself. Then kill -9 of each daemon in the middle of a create: after
 * a restart every tenant ends running or cleanly failed, with exactly one VM and no orphan.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WarrenClient } from '@warren/sdk';
import { deleteAllTenants, endChild, pidsMatching, spawnDaemon } from '../helpers/daemons.ts';
import { freePort } from '../helpers/free-port.ts';
import { minimalImage, REPO_ROOT } from '../helpers/image.ts';
import { logLines } from '../helpers/logs.ts';
import { parsePrometheusText, sampleValue } from '../helpers/prom-text.ts';
import { until } from '../helpers/until.ts';

const NODE = join(REPO_ROOT, 'scripts', 'node.sh');
let dataDir = '';
let port = 0;
let url = '';
let cp: ChildProcess | undefined;
let agent: ChildProcess | undefined;
let adminToken = '';
/** Prometheus' token for both daemons' /metrics (WARREN_METRICS_TOKEN). */
const metricsToken = `mt-${randomBytes(24).toString('hex')}`;
/**
 * Every line both daemons wrote, over the whole run (restarts included): the last test checks
 * that no credential or secret value ever reached them. Tests add what they must not find to
 * `secrets` (tokens, keys, credential values), so a new kind of secret is one push away.
 */
const logs: { name: string; text: string }[] = [];
const secrets = new Map<string, string>([['metrics token', metricsToken]]);

function daemon(
  which: 'control-plane' | 'host-agent',
  env: Record<string, string>,
  name: string,
): ChildProcess {
  let log = '';
  const all = { name, text: '' };
  logs.push(all);
  const child = spawnDaemon(which, {
    dataDir,
    env: {
      WARREN_METRICS_TOKEN: metricsToken,
      WARREN_LOG_FORMAT: 'json',
      // Everything, debug lines too: the secrets check reads all of it.
      WARREN_LOG_LEVEL: 'debug',
      ...env,
    },
    // Both daemons log to stderr only.
    ignoreStdout: true,
    onOutput: (b) => {
      log = (log + b).slice(-8000);
      all.text += b;
    },
  });
  child.on('exit', (code, signal) => {
    if (code) process.stderr.write(`# ${name} exited ${code} ${signal}:\n${log}\n`);
  });
  return child;
}

async function startControlPlane(): Promise<void> {
  cp = daemon(
    'control-plane',
    {
      WARREN_API_PORT: String(port),
      WARREN_DEFAULT_PROFILE: 'minimal',
      WARREN_HEARTBEAT_TIMEOUT_MS: '20000',
      // Often, so the backups test sees unreferenced chunks go within its deadline.
      WARREN_BACKUP_GC_INTERVAL_MS: '2000',
      // No scheduled restore drill: its scratch tenant would be one more VM in this test's counts.
      WARREN_BACKUP_DRILL_INTERVAL_MS: '0',
    },
    'control plane',
  );
  await until('the control plane', async () => (await fetch(`${url}/v1/health`)).ok);
}

async function startAgent(): Promise<void> {
  agent = daemon(
    'host-agent',
    {
      WARREN_CONTROL_PLANE_URL: url,
      WARREN_JOIN_TOKEN_FILE: join(dataDir, 'control-plane', 'join-token'),
      WARREN_AGENT_LISTEN: '127.0.0.1:0',
      WARREN_HEARTBEAT_MS: '500',
      WARREN_HOST_NAME: 'test-host',
      WARREN_BOOT_TIMEOUT_MS: '90000',
    },
    'host agent',
  );
}

const kill9 = (child: ChildProcess | undefined) => endChild(child, 'SIGKILL');

function warren(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      NODE,
      [join(REPO_ROOT, 'packages/cli/src/main.ts'), ...args],
      // No WARREN_API_URL or WARREN_TOKEN: the CLI must find the local API and admin token.
      { env: { ...process.env, WARREN_DATA_DIR: dataDir, ...env }, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

function client(): WarrenClient {
  return new WarrenClient({ url, token: adminToken });
}

/** Tenant VM directories on the host (ten-<hex>), and any half-made ones. */
async function vmDirs(): Promise<string[]> {
  return (await readdir(join(dataDir, 'vms')).catch(() => [] as string[])).filter((n) => n.includes('ten-'));
}

const qemuPids = () => pidsMatching(`${dataDir}/vms/`);

/** A daemon's /metrics, parsed strictly (throws on anything Prometheus would refuse). */
async function metricsOf(base: string) {
  const res = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } });
  assert.equal(res.status, 200, `${base}/metrics: ${res.status}`);
  return parsePrometheusText(await res.text());
}

before(async () => {
  await minimalImage();
  dataDir = await mkdtemp(join(tmpdir(), 'wp-'));
  port = await freePort();
  url = `http://127.0.0.1:${port}`;
  await startControlPlane();
  adminToken = (await readFile(join(dataDir, 'control-plane', 'admin-token'), 'utf8')).trim();
  secrets.set('admin token', adminToken);
  secrets.set('join token', (await readFile(join(dataDir, 'control-plane', 'join-token'), 'utf8')).trim());
  await startAgent();
  await until('the host to join', async () =>
    (await client().hosts.list()).some((h) => h.health === 'healthy'),
  );
});

after(async () => {
  // Delete what is left through the platform, then make sure: no QEMU, no files.
  try {
    await deleteAllTenants(client());
  } catch {}
  await kill9(agent);
  await kill9(cp);
  for (const pid of await qemuPids()) process.kill(pid, 'SIGKILL');
  await sleep(200);
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('the platform end to end', { timeout: 600_000 }, () => {
  test('CLI: create, exec, stop, start, list, keys, audit, delete; nothing of the tenant left; /metrics moves with it', async () => {
    const hostAddress = (await client().hosts.list())[0]!.address;
    const agentBefore = await metricsOf(hostAddress);
    const cpBefore = await metricsOf(url);
    const created = await warren(['tenant', 'create', 'demo', '--memory', '512', '--disk', '256']);
    assert.equal(created.code, 0, created.stderr);
    // The boot shows on the host agent's /metrics; the requests on the control plane's.
    const agentAfter = await metricsOf(hostAddress);
    // A first boot is cold or, with WARREN_TEMPLATE_START=on (the default), from a template.
    const booted = (name: string, labels: Record<string, string>) =>
      ['cold', 'template'].reduce(
        (sum, kind) =>
          sum +
          sampleValue(agentAfter, name, { ...labels, kind }) -
          sampleValue(agentBefore, name, { ...labels, kind }),
        0,
      );
    assert.equal(booted('warren_vm_boots_total', { result: 'ok' }), 1);
    assert.equal(booted('warren_vm_boot_duration_seconds_count', {}), 1);
    const creates = { method: 'POST', route: '/v1/tenants', status: '202' };
    assert.equal(
      sampleValue(await metricsOf(url), 'warren_http_requests_total', creates) -
        sampleValue(cpBefore, 'warren_http_requests_total', creates),
      1,
    );
    // The VM's cgroup is read for its memory and CPU time.
    const vm = `ten-${(await client().tenants.get('demo')).id.slice(4)}`;
    assert.ok(
      sampleValue(agentAfter, 'warren_vm_memory_bytes', { vm }) > 1024 * 1024,
      'VM memory from its cgroup',
    );
    assert.ok(
      sampleValue(agentAfter, 'warren_vm_cpu_seconds_total', { vm }) > 0,
      'VM CPU time from its cgroup',
    );
    // /metrics of the host agent takes only the metrics token.
    assert.equal((await fetch(`${hostAddress}/metrics`)).status, 401);
    assert.equal(
      (await fetch(`${hostAddress}/metrics`, { headers: { authorization: `Bearer ${adminToken}` } })).status,
      401,
    );
    const uname = await warren(['tenant', 'exec', 'demo', '--', 'uname', '-r']);
    assert.equal(uname.code, 0, uname.stderr);
    assert.match(uname.stdout, /^\d+\.\d+\.\d+-\d+-cloud-amd64\n$/);
    const exit7 = await warren([
      'tenant',
      'exec',
      'demo',
      '--',
      'sh',
      '-c',
      'echo out; echo err >&2; exit 7',
    ]);
    assert.equal(exit7.code, 7);
    assert.equal(exit7.stdout, 'out\n');
    assert.match(exit7.stderr, /err/);

    // Files through the SDK: bytes in, the same bytes out.
    const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i % 251));
    await client().tenants.upload('demo', '/workspace/blob.bin', data);
    assert.deepEqual(await client().tenants.downloadBuffer('demo', '/workspace/blob.bin'), data);

    assert.equal((await warren(['tenant', 'stop', 'demo'])).code, 0);
    let list = JSON.parse((await warren(['tenant', 'list', '--json'])).stdout);
    assert.equal((Array.isArray(list) ? list : list.tenants)[0].state, 'stopped');
    assert.equal((await warren(['tenant', 'start', 'demo'])).code, 0);
    list = JSON.parse((await warren(['tenant', 'list', '--json'])).stdout);
    const demo = (Array.isArray(list) ? list : list.tenants)[0];
    assert.equal(demo.state, 'running');
    assert.equal(demo.desiredState, 'running');
    // The data volume survived the stop.
    assert.deepEqual(await client().tenants.downloadBuffer('demo', '/workspace/blob.bin'), data);

    // A tenant key works for its tenant, and the CLI takes it from WARREN_TOKEN.
    const key = await warren(['key', 'create', '--tenant', 'demo', '--json']);
    const token = JSON.parse(key.stdout).token as string;
    secrets.set('tenant key', token);
    // One request followed through both daemons' logs by its id.
    const traced = await fetch(`${url}/v1/tenants/demo/exec`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ argv: ['true'] }),
    });
    await traced.text();
    const requestId = traced.headers.get('x-request-id')!;
    assert.match(requestId, /^req_[0-9a-f]{16}$/);
    await until(
      'the request id in both logs',
      () =>
        ['control plane', 'host agent'].every((n) =>
          logs.some((l) => l.name === n && logLines(l.text).some((x) => x.reqId === requestId)),
        ),
      10_000,
    );
    const mine = await warren(['tenant', 'show', 'demo', '--json'], {
      WARREN_API_URL: url,
      WARREN_TOKEN: token,
    });
    assert.equal(mine.code, 0, mine.stderr);
    const hosts = await warren(['host', 'list'], { WARREN_API_URL: url, WARREN_TOKEN: token });
    assert.notEqual(hosts.code, 0);
    assert.match(hosts.stderr, /FORBIDDEN/);

    const audit = JSON.parse((await warren(['audit', '--json'])).stdout);
    const events = Array.isArray(audit) ? audit : audit.events;
    const actions = events.map((e: { action: string }) => e.action);
    for (const a of [
      'tenant.create',
      'tenant.exec',
      'tenant.stop',
      'tenant.start',
      'key.create',
      'tenant.files.write',
    ]) {
      assert.ok(actions.includes(a), `audit lacks ${a}: ${actions}`);
    }
    for (const e of events) {
      assert.ok(e.actor && e.action && e.target && e.result && e.at, JSON.stringify(e));
    }

    const vmDir = join(dataDir, 'vms', `ten-${demo.id.slice(4)}`);
    assert.ok(existsSync(vmDir));
    const deleted = await warren(['tenant', 'delete', 'demo']);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.equal(existsSync(vmDir), false, 'VM directory left behind');
    assert.deepEqual(await vmDirs(), []);
    assert.deepEqual(await qemuPids(), []);
    assert.equal(existsSync(`/sys/fs/cgroup/memory/warren/ten-${demo.id.slice(4)}`), false);
    const gone = await warren(['tenant', 'show', 'demo']);
    assert.notEqual(gone.code, 0);
    assert.match(gone.stderr, /NOT_FOUND/);
    // The key died with the tenant; the audit trail did not.
    const dead = await warren(['tenant', 'list'], { WARREN_API_URL: url, WARREN_TOKEN: token });
    assert.match(dead.stderr, /UNAUTHENTICATED/);
    const trail = await client().audit.list({ tenant: demo.id, limit: 100 });
    assert.ok(trail.some((e) => e.action === 'tenant.delete'));
  });

  test('CLI safe YOLO: tenant run with a secret lists the changed files and reverts; rm -rf / is undone; snapshots; delete removes them', async () => {
    assert.equal((await warren(['tenant', 'create', 'yolo', '--memory', '256', '--disk', '64'])).code, 0);
    const secretFile = join(dataDir, 'yolo-token');
    const secret = `tok-${process.pid}-${Date.now().toString(36)}`;
    secrets.set('session credential', secret);
    await writeFile(secretFile, secret, { mode: 0o600 });
    assert.equal(
      (await warren(['tenant', 'exec', 'yolo', '--', 'sh', '-c', 'echo kept > /workspace/kept'])).code,
      0,
    );

    // A run: the secret is there, its output streams, its exit code comes back, and what it
    // changed on both disks is listed before the revert.
    const first = await warren([
      'tenant',
      'run',
      'yolo',
      '--secret',
      `TOKEN=@${secretFile}`,
      '--',
      'sh',
      '-c',
      'cat /run/warren/credentials/TOKEN; echo; echo made > /workspace/made; echo x > /etc/yolo-made; rm /workspace/kept; sync; exit 3',
    ]);
    assert.equal(first.code, 3, first.stderr);
    assert.equal(first.stdout, `${secret}\n`);
    assert.match(first.stderr, /^ {2}A data \/workspace\/made$/m, first.stderr);
    assert.match(first.stderr, /^ {2}D data \/workspace\/kept$/m, first.stderr);
    assert.match(first.stderr, /^ {2}A root \/etc\/yolo-made$/m, first.stderr);
    assert.match(first.stderr, /ended: reverted/);
    const after = await warren([
      'tenant',
      'exec',
      'yolo',
      '--',
      'sh',
      '-c',
      'ls /workspace /etc/yolo-made; ls -A /run/warren/credentials',
    ]);
    assert.match(after.stdout, /^kept$/m, `the data volume is back to the clean snapshot: ${after.stderr}`);
    assert.doesNotMatch(after.stdout, /made/);
    assert.match(after.stderr, /yolo-made: No such file/);

    // The agent wrecks its guest: afterwards the tenant execs as before.
    // GNU rm (standard image) wants --no-preserve-root, busybox's (the minimal image here) refuses
    // the option and removes / without it; `[` is a shell builtin, so it still runs after.
    const wreck = await warren([
      'tenant',
      'run',
      'yolo',
      '--quiet',
      '--',
      'sh',
      '-c',
      'rm -rf --no-preserve-root / 2>/dev/null || rm -rf / 2>/dev/null; [ -e /etc/passwd ] && echo intact || echo wrecked',
    ]);
    assert.equal(wreck.stdout, 'wrecked\n', wreck.stderr);
    assert.equal(wreck.code, 0, `the run and its revert succeed: ${wreck.stderr}`);
    const whole = await warren(['tenant', 'exec', 'yolo', '--', 'sh', '-c', 'cat /workspace/kept; uname -s']);
    assert.equal(whole.code, 0, whole.stderr);
    assert.equal(whole.stdout, 'kept\nLinux\n');

    // Snapshots by name through the CLI.
    assert.equal((await warren(['tenant', 'snapshot', 'create', 'yolo', '--name', 's1'])).code, 0);
    await warren(['tenant', 'exec', 'yolo', '--', 'rm', '/workspace/kept']);
    const listed = JSON.parse((await warren(['tenant', 'snapshot', 'list', 'yolo', '--json'])).stdout);
    const names = (Array.isArray(listed) ? listed : listed.snapshots).map((x: { name: string }) => x.name);
    assert.ok(names.includes('s1') && names.includes('session-base'), names.join(','));
    assert.equal((await warren(['tenant', 'snapshot', 'revert', 'yolo', 's1'])).code, 0);
    assert.equal((await warren(['tenant', 'exec', 'yolo', '--', 'cat', '/workspace/kept'])).stdout, 'kept\n');
    assert.equal((await warren(['tenant', 'snapshot', 'delete', 'yolo', 's1'])).code, 0);

    const demo = JSON.parse((await warren(['tenant', 'show', 'yolo', '--json'])).stdout);
    const vmDir = join(dataDir, 'vms', `ten-${(demo.tenant ?? demo).id.slice(4)}`);
    assert.ok(existsSync(join(vmDir, 'snapshots', 'session-base')));
    assert.equal((await warren(['tenant', 'delete', 'yolo'])).code, 0);
    assert.equal(existsSync(vmDir), false, 'the tenant and its snapshots are gone');
  });

  test('CLI backups: taken while a writer runs, restored to their point in time into the same tenant and a new one; verify; a restore drill; kill -9 of the control plane mid-backup; GC leaves nothing', async () => {
    assert.equal((await warren(['tenant', 'create', 'bk', '--memory', '256', '--disk', '64'])).code, 0);
    const sh = async (tenant: string, script: string) => {
      const r = await warren(['tenant', 'exec', tenant, '--', 'sh', '-c', script]);
      assert.equal(r.code, 0, `${script}: ${r.stderr}`);
      return r.stdout;
    };
    const lines = async (tenant: string) => Number((await sh(tenant, 'wc -l < /workspace/log')).trim());
    await sh(
      'bk',
      'cd /workspace && yes "a workspace file" | head -c 2000000 > a.txt && mkdir d && echo one > d/b && sync',
    );
    const digests = 'cd /workspace && sha256sum a.txt d/b';
    const before = await sh('bk', digests);
    // A writer appends numbered lines, one sync each, through the backup.
    await sh(
      'bk',
      '(i=0; while [ ! -e /workspace/stop ]; do i=$((i+1)); echo "line $i" >> /workspace/log; sync; done) </dev/null >/dev/null 2>&1 &',
    );
    await until('the writer to have written', async () => (await lines('bk')) >= 10);

    const made = await warren(['tenant', 'backup', 'bk']);
    assert.equal(made.code, 0, made.stderr);
    const listed = JSON.parse((await warren(['tenant', 'backups', 'bk', '--json'])).stdout);
    const backups = (Array.isArray(listed) ? listed : listed.backups) as { id: string; state: string }[];
    assert.equal(backups.length, 1);
    assert.equal(backups[0]!.state, 'complete');
    const id = backups[0]!.id;
    const atBackup = await lines('bk');
    await sh(
      'bk',
      'touch /workspace/stop; while [ ! -e /workspace/stop ]; do sleep 0.1; done; sleep 0.3; echo more > /workspace/d/b; rm /workspace/a.txt; sync',
    );
    const finalLog = await sh('bk', 'cat /workspace/log');

    // The restored log is a clean prefix of what the writer wrote: every line whole, in order,
    // ending at or after what the backup had seen when it returned... and before the end.
    const checkPointInTime = async (tenant: string) => {
      assert.equal(await sh(tenant, digests), before, `${tenant}: the files written before the backup`);
      const log = await sh(tenant, 'cat /workspace/log');
      assert.ok(finalLog.startsWith(log), `${tenant}: the restored log is a prefix of the writer's`);
      assert.match(log, /^(line \d+\n)+$/, `${tenant}: every restored line is whole`);
      const n = log.split('\n').length - 1;
      assert.ok(n >= 10 && n <= atBackup, `${tenant}: ${n} lines, between 10 and ${atBackup}`);
    };

    // Into a new tenant (a clone), placed by the scheduler; then into the same tenant.
    const cloned = await warren(['tenant', 'restore', 'bk', id, '--new', 'bk-clone']);
    assert.equal(cloned.code, 0, cloned.stderr);
    await checkPointInTime('bk-clone');
    // Deleted now: the host here has room for two such tenants, and the drill below needs one.
    assert.equal((await warren(['tenant', 'delete', 'bk-clone'])).code, 0);
    const same = await warren(['tenant', 'restore', 'bk', id]);
    assert.equal(same.code, 0, same.stderr);
    await checkPointInTime('bk');
    const verified = await warren(['tenant', 'backup', 'verify', 'bk', id]);
    assert.equal(verified.code, 0, verified.stderr + verified.stdout);
    // A restore drill: the backup restored into a scratch VM that boots, its files' digests as
    // the guest reads them equal to the host's own reading of the restored volume.
    const drill = await warren(['tenant', 'backup', 'drill', 'bk', id]);
    assert.equal(drill.code, 0, drill.stderr + drill.stdout);
    const drilled = await client().backups.get('bk', id);
    assert.equal(drilled.drill?.state, 'passed', JSON.stringify(drilled.drill));
    assert.ok((drilled.drill?.filesChecked ?? 0) >= 3, `files checked: ${drilled.drill?.filesChecked}`);
    assert.ok(
      (await client().tenants.list({})).every((t) => !t.name.startsWith('drill-')),
      'the scratch tenant is gone',
    );

    // kill -9 of the control plane just after it started a backup: after its restart the
    // backup is either complete (and restorable) or not listed as usable; never half.
    const started = await warren(['tenant', 'backup', 'bk', '--no-wait']);
    assert.equal(started.code, 0, started.stderr);
    await kill9(cp);
    await startControlPlane();
    const settled = await until('the interrupted backup to settle', async () => {
      const all = await client().backups.list('bk');
      return all.every((b) => b.state !== 'running') && all;
    });
    process.stdout.write(`# backups after the kill: ${settled.map((b) => b.state).join(', ')}\n`);
    for (const b of settled.filter((x) => x.state === 'complete')) {
      const v = await client().backups.verify('bk', b.id);
      assert.equal(v.ok, true, JSON.stringify(v.problems));
    }

    // kill -9 of the control plane just after it started a restore: afterwards the tenant runs
    // on one whole state, the backup's point in time or what it had before (the marker).
    await sh('bk', 'echo before-restore > /workspace/marker && sync');
    const { operation } = await client().backups.restore('bk', id);
    await kill9(cp);
    await startControlPlane();
    const ended = await client()
      .operations.wait(operation.id, { timeoutMs: 300_000 })
      .catch(async () => client().operations.get(operation.id));
    await until('bk to run', async () => (await client().tenants.get('bk')).state === 'running');
    const marker = await sh('bk', 'cat /workspace/marker 2>/dev/null || echo gone');
    process.stdout.write(`# restore after the kill: ${ended.status}, marker ${marker.trim()}\n`);
    if (ended.status === 'succeeded') {
      assert.equal(marker, 'gone\n');
      await checkPointInTime('bk');
    } else assert.equal(marker, 'before-restore\n', 'a failed restore left the tenant as it was');

    // Deleting every backup and the clone leaves the object store empty once GC has run.
    for (const b of await client().backups.list('bk')) await client().backups.delete('bk', b.id);
    assert.equal((await warren(['tenant', 'delete', 'bk'])).code, 0);
    const objects = join(dataDir, 'objects');
    const left = async () =>
      (await readdir(objects, { recursive: true, withFileTypes: true }).catch(() => [])).filter((e) =>
        e.isFile(),
      );
    await until('GC to remove every chunk and manifest', async () => (await left()).length === 0, 60_000);
  });

  test('CLI idle: --idle-timeout 20s suspends an idle tenant (its QEMU gone, its memory free in host show); an exec wakes it with its processes; start of a suspended tenant', async () => {
    const made = await warren([
      'tenant',
      'create',
      'idler',
      '--memory',
      '256',
      '--disk',
      '64',
      '--idle-timeout',
      '20s',
    ]);
    assert.equal(made.code, 0, made.stderr);
    const show = async () => JSON.parse((await warren(['tenant', 'show', 'idler', '--json'])).stdout);
    const tenant = await show();
    assert.equal(tenant.idleTimeout.setting, '20s');
    const vmDir = join(dataDir, 'vms', `ten-${tenant.id.slice('ten_'.length)}`);
    const qemuOfTenant = async () =>
      (await qemuPids()).filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(vmDir);
        } catch {
          return false;
        }
      });
    const sh = async (script: string) => {
      const r = await warren(['tenant', 'exec', 'idler', '--', 'sh', '-c', script]);
      assert.equal(r.code, 0, `${script}: ${r.stderr}`);
      return r.stdout.trim();
    };
    // A process that counts in memory: it must go on counting from where it was after a wake.
    const pid = await sh(
      '(i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done) </dev/null >/dev/null 2>&1 & echo $!',
    );
    await until('the counter to count', async () => Number(await sh('cat /tmp/count')) >= 2);
    assert.ok((await qemuOfTenant()).length > 0, 'the tenant runs a QEMU');

    await until('the idle tenant to be suspended', async () => (await show()).state === 'suspended', 120_000);
    assert.deepEqual(await qemuOfTenant(), [], 'no QEMU of a suspended tenant');
    const host = JSON.parse((await warren(['host', 'show', 'test-host', '--json'])).stdout);
    assert.ok(
      host.suspended.memoryMiB >= 256,
      `the host counts the suspended memory: ${JSON.stringify(host.suspended)}`,
    );
    const before = Number(await sh('cat /tmp/count'));
    assert.ok(before >= 2, 'the exec woke the tenant and read the counter');
    assert.equal(await sh(`kill -0 ${pid} && echo alive`), 'alive', 'the counting process survived');
    await until('the counter to go on counting', async () => Number(await sh('cat /tmp/count')) > before);
    assert.equal((await show()).state, 'running');

    // Suspended again, then woken by `tenant start`: an ordinary start that ends running.
    await until(
      'the tenant to be suspended again',
      async () => (await show()).state === 'suspended',
      120_000,
    );
    const started = await warren(['tenant', 'start', 'idler']);
    assert.equal(started.code, 0, started.stderr);
    assert.equal((await show()).state, 'running');
    assert.equal(await sh(`kill -0 ${pid} && echo alive`), 'alive');
    assert.equal((await warren(['tenant', 'delete', 'idler'])).code, 0);
  });

  test('kill -9 of the control plane in the middle of creates, then restart: running or never created, no orphan', async () => {
    const create = (name: string) =>
      fetch(`${url}/v1/tenants`, {
        method: 'POST',
        headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name, memoryMiB: 512, diskMiB: 256 }),
      }).then(
        (r) => r.status,
        () => 0,
      );
    // One create acknowledged just before the kill (its VM not yet up), a burst in flight at the kill.
    const acknowledged = await create('cp-crash-0');
    assert.equal(acknowledged, 202);
    const burst = [1, 2, 3].map((i) => create(`cp-crash-${i}`));
    await sleep(3);
    await kill9(cp);
    const answered = await Promise.all(burst);
    process.stdout.write(
      `# creates in flight at the kill answered: ${answered.join(', ')} (0 = connection lost)\n`,
    );
    await startControlPlane();
    const tenants = await until('the creates to settle', async () => {
      const ts = await client().tenants.list({});
      return ts.every((t) => t.state === 'running' || t.state === 'failed') && ts;
    });
    assert.ok(
      tenants.some((t) => t.name === 'cp-crash-0'),
      'acknowledged create lost',
    );
    answered.forEach((status, i) => {
      if (status === 202)
        assert.ok(
          tenants.some((t) => t.name === `cp-crash-${i + 1}`),
          'acknowledged create lost',
        );
    });
    for (const t of tenants) assert.equal(t.state, 'running', `${t.name}: ${JSON.stringify(t.lastError)}`);
    const dirs = await until('VMs to match tenants', async () => {
      const d = await vmDirs();
      return d.length === tenants.length && d;
    });
    assert.deepEqual(dirs.sort(), tenants.map((t) => `ten-${t.id.slice(4)}`).sort());
    assert.equal((await qemuPids()).length, tenants.length);
    for (const t of tenants) await client().tenants.delete(t.name);
    await until('crash tenants deleted', async () => (await vmDirs()).length === 0, 60_000);
  });

  test('kill -9 of the host agent in the middle of a create, then restart: one running VM, no partial files', async () => {
    const { tenant } = await client().tenants.create({ name: 'agent-crash', memoryMiB: 512, diskMiB: 256 });
    await until('the agent to start working on it', async () => {
      const t = await client().tenants.get('agent-crash');
      return t.state === 'provisioning' || t.state === 'starting';
    });
    await kill9(agent);
    await sleep(500);
    await startAgent();
    const t = await until('the tenant to run', async () => {
      const x = await client().tenants.get('agent-crash');
      return x.state === 'running' && x;
    });
    assert.equal(t.id, tenant.id);
    const ex = await client().tenants.exec(
      'agent-crash',
      { argv: ['echo', 'alive'] },
      { onStdout: () => {} },
    );
    assert.equal(ex.exitCode, 0);
    assert.deepEqual(await vmDirs(), [`ten-${tenant.id.slice(4)}`]);
    assert.equal((await qemuPids()).length, 1, 'exactly one QEMU for the tenant');
    await client().tenants.delete('agent-crash');
    await until(
      'deleted',
      async () => (await vmDirs()).length === 0 && (await qemuPids()).length === 0,
      60_000,
    );
  });

  test('state survives a restart of both daemons', async () => {
    await client().tenants.create({ name: 'survivor', memoryMiB: 512, diskMiB: 256 });
    await until('running', async () => (await client().tenants.get('survivor')).state === 'running');
    const key = await client().keys.create({ tenant: 'survivor' });
    const before = await client().audit.list({ limit: 1000 });
    await kill9(cp);
    await kill9(agent);
    await startControlPlane();
    await startAgent();
    const again = await until('running after restart', async () => {
      const t = await client().tenants.get('survivor');
      return t.state === 'running' && t;
    });
    assert.equal(again.name, 'survivor');
    // The admin token file and the tenant key still work; the audit trail is intact.
    assert.equal(adminToken, (await readFile(join(dataDir, 'control-plane', 'admin-token'), 'utf8')).trim());
    const asTenant = new WarrenClient({ url, token: key.token });
    assert.deepEqual(
      (await asTenant.tenants.list({})).map((t) => t.name),
      ['survivor'],
    );
    const afterRestart = await client().audit.list({ limit: 1000 });
    assert.ok(afterRestart.length >= before.length);
    assert.deepEqual(afterRestart.slice(-before.length), before);
  });

  test('logs: every line of both daemons is JSON, and no credential or secret value is in any', async () => {
    // The host's own credentials, as its agent saved them.
    const saved = JSON.parse(await readFile(join(dataDir, 'control-plane.json'), 'utf8'));
    for (const field of ['hostToken', 'agentToken', 'token']) {
      if (typeof saved[field] === 'string') secrets.set(`host agent ${field}`, saved[field]);
    }
    assert.ok(secrets.size >= 5, [...secrets.keys()].join(', '));
    let lines = 0;
    for (const { name, text } of logs) {
      // Whole lines only: a daemon killed with -9 (the crash tests) may have left half of its last.
      lines += logLines(text.slice(0, text.lastIndexOf('\n') + 1)).length;
      for (const [what, value] of secrets) {
        assert.ok(value.length >= 16, `${what} is too short to search for`);
        assert.ok(!text.includes(value), `the ${what} is in the ${name}'s log`);
      }
    }
    process.stdout.write(
      `# ${lines} log lines of ${logs.length} daemon runs searched for ${[...secrets.keys()].join(', ')}\n`,
    );
    assert.ok(lines > 50, `only ${lines} lines: is anything logged?`);
  });
});
