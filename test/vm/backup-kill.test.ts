/**
 * kill -9 of the host agent daemon in the middle of a backup and of a restore, against a real
 * S3-protocol server (s3rver) behind a gate on loopback that holds the agent's first chunk
 * upload (backup) or download (restore): the kill comes at that exact point, not at a time
 * guessed. After a restart: the VM runs on with its data as it was, its volume not frozen, no
 * temporary file left, no manifest of the killed backup in the store, and the agent's log holds
 * no key.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createObjectStore, type ObjectStore } from '@warren/object-store';
import type { BackupMetadata } from '@warren/protocol';
import { minimalImage, REPO_ROOT, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { type S3Server, startS3Server } from '../helpers/s3-server.ts';
import { until } from '../helpers/until.ts';

const BUCKET = 'warren-kill';
const VM = 'vm-bakkill';

interface Answer {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: JSON of the agent's answers, checked field by field
  body: any;
}

function api(socketPath: string, method: string, path: string, body?: unknown): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json' };
    const req = request({ socketPath, method, path, headers }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => {
        let parsed: unknown = text;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          // NDJSON (exec): the lines, parsed.
          parsed = text
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l));
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/**
 * A reverse proxy to the S3 server that, once armed with a pattern, holds the first request
 * matching it (never answers it) and says so: the moment a job is mid-way, seen from outside.
 */
class Gate {
  readonly server: Server;
  #pattern: RegExp | undefined;
  held: string | undefined;
  readonly #open = new Set<ServerResponse>();

  constructor(upstream: string) {
    const target = new URL(upstream);
    this.server = createServer((req: IncomingMessage, res: ServerResponse) => {
      const line = `${req.method} ${req.url}`;
      if (this.#pattern?.test(line) && !this.held) {
        this.held = line;
        this.#open.add(res);
        req.resume();
        return;
      }
      const up = request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
  }

  arm(pattern: RegExp): void {
    this.#pattern = pattern;
    this.held = undefined;
  }

  release(): void {
    this.#pattern = undefined;
    for (const res of this.#open) res.destroy();
    this.#open.clear();
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
}

describe('kill -9 of the host agent mid-backup and mid-restore', { timeout: 900_000 }, () => {
  let dataDir = '';
  let s3: S3Server | undefined;
  let gate: Gate | undefined;
  let store: ObjectStore;
  let agent: ChildProcess | undefined;
  let agentLog = '';
  let env: Record<string, string> = {};
  const keys = { tenant: randomBytes(32).toString('base64') };
  const metadata: BackupMetadata = {
    tenantId: 'ten_0123456789abcdef',
    tenantName: 'kill-test',
    imageId: 'minimal',
    resources: {},
    network: null,
  };
  const socket = () => join(dataDir, 'host-agent.sock');
  const call = (method: string, path: string, body?: unknown) => api(socket(), method, path, body);
  const run = async (script: string): Promise<string> => {
    const r = await call('POST', `/v1/vms/${VM}/exec`, { argv: ['sh', '-c', script] });
    // NDJSON: one line (no output) parses as one object.
    const lines = (Array.isArray(r.body) ? r.body : [r.body]) as {
      stdout?: string;
      stderr?: string;
      exit?: { exitCode: number };
    }[];
    const exit = lines.find((l) => l.exit)?.exit;
    const out = (k: 'stdout' | 'stderr') =>
      lines
        .filter((l) => l[k])
        .map((l) => Buffer.from(l[k]!, 'base64').toString())
        .join('');
    assert.equal(exit?.exitCode, 0, `${script}: ${out('stderr')}`);
    return out('stdout');
  };
  const job = async (id: string) =>
    until(
      `job ${id} ends`,
      async () => {
        const r = await call('GET', `/v1/backup-jobs/${id}`);
        return r.body.state !== 'running' && r.body;
      },
      300_000,
      50,
    );

  async function startAgent(): Promise<void> {
    agentLog = '';
    const child = spawn(
      join(REPO_ROOT, 'scripts', 'node.sh'),
      [join(REPO_ROOT, 'apps/host-agent/src/main.ts')],
      {
        env: { ...process.env, ...env },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    child.stderr!.on('data', (c) => (agentLog += c));
    agent = child;
    await until(
      'the host agent listens',
      async () => {
        if (child.exitCode !== null) throw new Error(`host agent exited: ${agentLog}`);
        return existsSync(socket()) && (await call('GET', '/v1/host')).status === 200;
      },
      60_000,
    );
  }

  async function killAgent(): Promise<void> {
    const child = agent!;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    agent = undefined;
  }

  before(async () => {
    const image = await minimalImage();
    dataDir = await mkdtemp(join(tmpdir(), 'wt-bk-'));
    s3 = await startS3Server(join(dataDir, 's3'), BUCKET);
    gate = new Gate(s3.endpoint);
    const endpoint = await gate.listen();
    env = {
      WARREN_DATA_DIR: dataDir,
      WARREN_IMAGES_DIR: TEST_IMAGES_DIR,
      WARREN_NETWORK: 'off',
      WARREN_VMM: 'qemu',
      WARREN_OBJECT_STORE: 's3',
      WARREN_S3_ENDPOINT: endpoint,
      WARREN_S3_BUCKET: BUCKET,
      WARREN_S3_ACCESS_KEY_ID: 'S3RVER',
      WARREN_S3_SECRET_ACCESS_KEY: 'S3RVER',
      WARREN_S3_FORCE_PATH_STYLE: 'on',
    };
    store = createObjectStore({
      kind: 's3',
      endpoint: s3.endpoint,
      bucket: BUCKET,
      accessKeyId: 'S3RVER',
      secretAccessKey: 'S3RVER',
      forcePathStyle: true,
    });
    await startAgent();
    const created = await call('POST', '/v1/vms', { id: VM, image, diskMiB: 64, memoryMiB: 256 });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const started = await call('POST', `/v1/vms/${VM}/start`);
    assert.equal(started.body.state, 'running', JSON.stringify(started.body));
  });

  after(async () => {
    gate?.release();
    if (agent) await killAgent();
    if (dataDir) {
      // Whatever the test left: destroyed through a fresh agent.
      await startAgent().catch(() => {});
      await call('DELETE', `/v1/vms/${VM}`).catch(() => {});
      if (agent) await killAgent();
      await rm(dataDir, { recursive: true, force: true });
    }
    await new Promise((r) => gate?.server.close(r));
    await s3?.stop();
  });

  let first = '';
  let digests = '';

  test('a killed backup leaves the VM running unfrozen, its data whole, and no manifest', async () => {
    await run('cd /workspace && yes one | head -c 2097152 > a.bin && sync');
    first = `bak_${randomBytes(8).toString('hex')}`;
    const r = await call('POST', `/v1/vms/${VM}/backups`, { id: first, keys, metadata });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    assert.equal((await job(first)).state, 'succeeded');
    // New content, so the next backup has chunks to upload.
    await run('cd /workspace && yes two | head -c 2097152 > b.bin && sync');
    digests = await run('cd /workspace && sha256sum a.bin b.bin');
    const chainBefore = JSON.parse(await readFile(join(dataDir, 'vms', VM, 'vm.json'), 'utf8')).disks;
    gate!.arm(/^PUT \/warren-kill\/chunks\//);
    const killed = `bak_${randomBytes(8).toString('hex')}`;
    assert.equal(
      (await call('POST', `/v1/vms/${VM}/backups`, { id: killed, keys, metadata, previous: first })).status,
      202,
    );
    await until('a chunk upload is held', () => gate!.held, 120_000, 20);
    await killAgent();
    gate!.release();
    assert.ok(!agentLog.includes(keys.tenant), 'the key is in the agent log');

    await startAgent();
    const status = await call('GET', `/v1/vms/${VM}`);
    assert.equal(status.body.state, 'running', JSON.stringify(status.body));
    assert.equal((await call('GET', `/v1/backup-jobs/${killed}`)).body.error.code, 'NOT_FOUND');
    assert.equal(await store.head(`manifests/${killed}`), undefined, 'no manifest');
    // Not frozen: a write goes through; the data is as it was.
    await run('echo after > /workspace/after && sync');
    assert.equal(await run('cd /workspace && sha256sum a.bin b.bin'), digests);
    // The chain holds the frozen layer the killed backup made, over the one before: nothing lost.
    const chainAfter = JSON.parse(await readFile(join(dataDir, 'vms', VM, 'vm.json'), 'utf8')).disks;
    assert.deepEqual(chainAfter.data.slice(0, chainBefore.data.length), chainBefore.data);
  });

  test('a killed restore leaves the VM on its old volume, and the temporary file is removed at start', async () => {
    const vmJson = await readFile(join(dataDir, 'vms', VM, 'vm.json'), 'utf8');
    gate!.arm(/^GET \/warren-kill\/chunks\//);
    const restoreJob = `bak_${randomBytes(8).toString('hex')}`;
    const r = await call('POST', `/v1/vms/${VM}/restore`, { job: restoreJob, backup: first, keys });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    await until('a chunk download is held', () => gate!.held, 120_000, 20);
    const layers = join(dataDir, 'vms', VM, 'jail', 'disks');
    assert.ok((await readdir(layers)).includes(`.restore-${restoreJob}-data`), 'the restore is mid-way');
    await killAgent();
    gate!.release();

    await startAgent();
    const names = await readdir(layers);
    assert.ok(!names.some((n) => n.includes(restoreJob)), names.join());
    assert.equal(await readFile(join(dataDir, 'vms', VM, 'vm.json'), 'utf8'), vmJson, 'vm.json as before');
    assert.equal((await call('GET', `/v1/vms/${VM}`)).body.state, 'running');
    assert.equal(await run('cd /workspace && sha256sum a.bin b.bin'), digests);
    assert.equal(await run('cat /workspace/after'), 'after\n');
  });
});
