import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import {
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type BackupKeyBuffers,
  CHUNK_SIZE,
  readManifest,
  restoreVolume,
  type VolumeSource,
  writeBackup,
} from '@warren/backup';
import type { BackupFormat, ControlPlaneConfig } from '@warren/control-plane';
import { type ControlPlane, loadConfig, openControlPlane } from '@warren/control-plane';
import { createObjectStore, type ObjectStore } from '@warren/object-store';
import {
  type BackupJob,
  type DesiredTenant,
  type FileChange,
  type FileDigest,
  type HeartbeatResponse,
  HostBackupRequest,
  HostRestoreRequest,
  PROXY_UPSTREAM_HEADER,
  type QuarantinedVm,
  type ReportedVm,
  type Resources,
  type Snapshot,
} from '@warren/protocol';
import type { Logger } from '@warren/telemetry';
import { acceptWebSocketEcho } from './ws-echo.ts';

export interface TestControlPlane {
  cp: ControlPlane;
  url: string;
  dataDir: string;
  adminToken: string;
  joinToken: string;
  /** Closes the server; `keepData` leaves the data directory for a restart. */
  close(keepData?: boolean): Promise<void>;
}

/**
 * A real control plane on 127.0.0.1 and a free port, with its own temporary data directory.
 * Tests drive the API at machine speed, so the per-credential burst is raised out of their way
 * (the limiter still runs on every request); test/api/limits.test.ts sets its own.
 */
export async function openTestControlPlane(
  overrides: Partial<ControlPlaneConfig> = {},
  dataDir?: string,
  options: { log?: (m: string) => void; logger?: Logger; backupFormat?: BackupFormat } = {},
): Promise<TestControlPlane> {
  const dir = dataDir ?? (await mkdtemp(join(tmpdir(), 'wcp-')));
  const cp = await openControlPlane(
    loadConfig({}, { dataDir: dir, host: '127.0.0.1', port: 0, rateLimitBurst: 1_000_000, ...overrides }),
    options,
  );
  const url = await cp.listen();
  const adminToken = (await readFile(cp.credentials.adminTokenPath, 'utf8')).trim();
  const joinToken = (await readFile(cp.credentials.joinTokenPath, 'utf8')).trim();
  return {
    cp,
    url,
    dataDir: dir,
    adminToken,
    joinToken,
    async close(keepData = false) {
      await cp.close();
      if (!keepData) await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A tiny API client for tests: JSON in, status and JSON out. */
export async function call(
  url: string,
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; raw?: string | Buffer; contentType?: string } = {},
): Promise<{ status: number; body: any; text: string }> {
  const headers: Record<string, string> = {};
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: string | Buffer | undefined;
  if (method === 'GET' || method === 'HEAD') {
    // no body
  } else if (opts.raw !== undefined) {
    body = opts.raw;
    headers['content-type'] = opts.contentType ?? 'application/json';
  } else if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers['content-type'] = 'application/json';
  }
  const res = await fetch(`${url}${path}`, {
    method,
    headers,
    ...(body === undefined ? {} : { body }),
    signal: AbortSignal.timeout(15_000),
  });
  // An event stream never ends by itself: its status and headers are the answer.
  if (res.ok && res.headers.get('content-type')?.startsWith('text/event-stream')) {
    await res.body?.cancel();
    return { status: res.status, body: undefined, text: '' };
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, body: json, text };
}

export const FAKE_IMAGE = `sha256:${'ab'.repeat(32)}`;

/**
 * A stand-in for a host agent, for tests of the control plane's API and scheduler (the agent
 * is outside what they test; test/vm/ runs the real one). It joins, heartbeats on demand,
 * "converges" instantly by reporting each tenant in its desired state, and serves the agent
 * API's exec and files routes with canned answers and its snapshot and credentials routes from
 * memory — or, given `remote`, joins on behalf of a
 * real agent API that the caller runs (the dashboard proxy's tests and benchmark do).
 */
export class FakeAgent {
  readonly name: string;
  readonly capacity: Resources;
  hostId = '';
  #token = '';
  #agentToken = randomBytes(32).toString('base64url');
  #server: Server | undefined;
  #address = '';
  #timer: NodeJS.Timeout | undefined;
  readonly #tunnels = new Set<Socket>();
  desired: DesiredTenant[] = [];
  /** Requests the control plane made to this agent, for assertions. */
  readonly seen: { method: string; url: string; auth: string | undefined; body: string }[] = [];
  /**
   * While set, exec and dashboard (`/proxy/`) answers send their first bytes, then stay open
   * until it resolves: long-running streams, for the concurrency caps' tests.
   */
  gate: Promise<void> | undefined;
  /** Exec and dashboard answers open right now. */
  streaming = 0;
  /** Files written through the fake's files route (`<vm id>:<path>` → text); others read `file-bytes`. */
  readonly files = new Map<string, string>();
  #fileKey(url: string): string {
    const u = new URL(url, 'http://agent');
    return `${u.pathname.split('/')[3]}:${u.searchParams.get('path')}`;
  }
  /** The exit code of every exec (its output is `fake` on stdout and `fake-err` on stderr). */
  execExitCode = 0;
  /** Snapshots per VM id, as the agent would keep them. */
  readonly snapshots = new Map<string, Map<string, Snapshot>>();
  /** Bytes each new snapshot holds (what the quota counts). */
  snapshotBytes = 64 * 1024 * 1024;
  /** Credentials in each VM's guest right now (what the guest's tmpfs would hold). */
  readonly credentials = new Map<string, unknown>();
  /** Reverts done, in order. */
  readonly reverts: { vmId: string; name: string }[] = [];
  /** While set, reverts wait for it before they answer (a revert that takes its time). */
  revertGate: Promise<void> | undefined;
  /** Reverts waiting on the gate right now. */
  reverting = 0;
  /** What every `changes` call answers. */
  changes: FileChange[] = [];
  /** Fails the next call of one kind (`PUT credentials`, `POST snapshots/revert`, …) with this agent error. */
  readonly failNext = new Map<string, { status: number; code: string; message: string }>();
  /**
   * Backups: the agent's job routes (`POST /v1/vms/:id/backups`, `POST /v1/vms/:id/restore`,
   * `GET /v1/backup-jobs/:id`) run jobs with the real @warren/backup library against a real
   * filesystem object store (`objectsDir`, set with `useObjectStore`), reading and writing each
   * VM's "volumes" from memory (`volumes`): manifests and chunks are the real thing.
   */
  readonly jobs = new Map<string, BackupJob>();
  /** Each VM's volumes (`data`, and `root` when set), as a disk's bytes. */
  readonly volumes = new Map<string, { data: Buffer; root?: Buffer }>();
  /** While set, a backup job reads its first chunk, then waits for it (progress visible meanwhile). */
  backupGate: Promise<void> | undefined;
  /** While set, a restore job waits for it before it reads anything. */
  restoreGate: Promise<void> | undefined;
  /** The point in time the next backups report (retention tests); now when unset. */
  pointInTime: (() => string) | undefined;
  /** The images this host reports having. */
  images: string[] = [FAKE_IMAGE];
  /** The profile it reports of an image: `standard` unless named here. */
  readonly imageProfiles = new Map<string, string>();
  /**
   * What the next heartbeats report of a tenant instead of its converged state (a VM that is
   * suspended, unhealthy, or failed with start attempts), by tenant id, until deleted.
   */
  readonly report = new Map<string, Partial<Pick<ReportedVm, 'state' | 'error' | 'attempts'>>>();
  /** The orphan VMs the heartbeats list as quarantined; absent (an older agent) when undefined. */
  quarantined: QuarantinedVm[] | undefined;
  /** How long exec and dashboard answers wait before their first byte (a VM being woken). */
  answerDelayMs = 0;
  /** Restore jobs done, in order. */
  readonly restores: { vmId: string; backup: string; start: string }[] = [];
  #objects: ObjectStore | undefined;
  #made = 0;
  /** The snapshot each VM was last made or reverted to, and the VMs that ran something since. */
  readonly #at = new Map<string, string>();
  readonly #dirty = new Set<string>();

  constructor(name: string, capacity: Resources) {
    this.name = name;
    this.capacity = capacity;
  }

  async start(
    cpUrl: string,
    joinToken: string,
    heartbeatMs = 0,
    remote?: { address: string; agentToken: string },
  ): Promise<this> {
    if (remote) {
      this.#address = remote.address;
      this.#agentToken = remote.agentToken;
    } else await this.#serveCannedApi();
    this.cpUrl = cpUrl;
    const joined = await call(cpUrl, 'POST', '/v1/agent/join', {
      token: joinToken,
      body: {
        name: this.name,
        address: this.#address,
        agentToken: this.#agentToken,
        agentVersion: 'fake',
        capacity: this.capacity,
      },
    });
    if (joined.status !== 200) {
      await this.stop();
      throw new Error(`join failed: ${joined.text}`);
    }
    this.hostId = joined.body.hostId;
    this.#token = joined.body.token;
    await this.heartbeat();
    if (heartbeatMs > 0) {
      this.#timer = setInterval(() => void this.heartbeat().catch(() => {}), heartbeatMs);
    }
    return this;
  }

  /** The agent API's exec and files routes with canned answers, recording what was asked. */
  async #serveCannedApi(): Promise<void> {
    this.#server = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', async () => {
        this.seen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, body });
        if (this.answerDelayMs > 0 && (req.url!.endsWith('/exec') || req.url!.includes('/proxy/')))
          await new Promise((r) => setTimeout(r, this.answerDelayMs));
        const vm = /^\/v1\/vms\/([^/]+)\/(snapshots|credentials)(.*)$/.exec(req.url!);
        const job = /^\/v1\/(?:vms\/([^/]+)\/(backups|restore)|backup-jobs\/([^/]+))$/.exec(req.url!);
        if (req.headers.authorization !== `Bearer ${this.#agentToken}`) {
          res.writeHead(401).end('{"error":{"code":"UNAUTHENTICATED","message":"no","fix":""}}');
        } else if (job) {
          this.#jobApi(req.method!, job[1], job[2], job[3], body, res);
        } else if (vm) {
          this.#snapshotApi(req.method!, vm[1]!, vm[2]!, vm[3]!, body, res);
        } else if (req.url!.endsWith('/exec') && this.#sha256sum(req.url!.split('/')[3]!, body, res)) {
          // Answered as a guest's sha256sum would (restore drills).
        } else if (req.url!.endsWith('/exec')) {
          this.#dirty.add(req.url!.split('/')[3]!);
          res.writeHead(200, { 'content-type': 'application/x-ndjson' });
          res.write(`${JSON.stringify({ stdout: Buffer.from('fake\n').toString('base64') })}\n`);
          res.write(`${JSON.stringify({ stderr: Buffer.from('fake-err\n').toString('base64') })}\n`);
          void this.#held(
            res,
            `${JSON.stringify({ exit: { exitCode: this.execExitCode, signal: null, timedOut: false, durationMs: 1 } })}\n`,
          );
        } else if (req.url!.includes('/proxy/')) {
          res.writeHead(200, { 'content-type': 'text/plain', [PROXY_UPSTREAM_HEADER]: '1' });
          res.write('dashboard ');
          void this.#held(res, 'page\n');
        } else if (req.url!.includes('/files') && req.method === 'PUT') {
          this.#dirty.add(req.url!.split('/')[3]!);
          this.files.set(this.#fileKey(req.url!), body);
          res
            .writeHead(201, { 'content-type': 'application/json' })
            .end(JSON.stringify({ path: '/x', bytes: body.length }));
        } else if (req.url!.includes('/files')) {
          res
            .writeHead(200, { 'content-type': 'application/octet-stream' })
            .end(this.files.get(this.#fileKey(req.url!)) ?? 'file-bytes');
        } else res.writeHead(204).end();
      });
    });
    // A dashboard's WebSocket: the handshake answered as the VM's (with the agent's marker), then an echo.
    this.#server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      this.seen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, body: '' });
      if (req.headers.authorization !== `Bearer ${this.#agentToken}` || !req.url!.includes('/proxy/')) {
        socket.destroy();
        return;
      }
      this.#tunnels.add(socket);
      socket.once('close', () => this.#tunnels.delete(socket));
      acceptWebSocketEcho(req, socket, head, [`${PROXY_UPSTREAM_HEADER}: 1`]);
    });
    await new Promise<void>((r) => this.#server!.listen(0, '127.0.0.1', r));
    this.#address = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  /**
   * The snapshot and credentials routes of the agent's remote API, kept in memory per VM as the
   * contract in docs/api.md describes them: names unique per VM (CONFLICT unless `reuse`), a
   * reuse that returns the snapshot unchanged when nothing ran since it (an exec or a file
   * write marks the VM changed), VM_NOT_RUNNING for a VM not desired running, NOT_FOUND for an
   * unknown snapshot. `failNext` makes the next call of one kind fail with an agent error.
   */
  #snapshotApi(
    method: string,
    vmId: string,
    kind: string,
    rest: string,
    body: string,
    res: ServerResponse,
    released = false,
  ): ServerResponse {
    const send = (status: number, value?: unknown): ServerResponse =>
      value === undefined
        ? res.writeHead(status).end()
        : res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
    const error = (status: number, code: string, message: string) =>
      send(status, { error: { code, message, fix: '' } });
    const d = this.desired.find((x) => x.vmId === vmId);
    if (!d) return error(404, 'VM_NOT_FOUND', `no VM ${vmId}`);
    const running = d.desiredState === 'running';
    const snaps = this.snapshots.get(vmId) ?? new Map<string, Snapshot>();
    this.snapshots.set(vmId, snaps);
    const op = `${method} ${kind}${rest.endsWith('/revert') ? '/revert' : rest.endsWith('/changes') ? '/changes' : rest ? '/:name' : ''}`;
    if (op === 'POST snapshots/revert' && this.revertGate && !released) {
      this.reverting++;
      void this.revertGate.then(() => {
        this.reverting--;
        this.#snapshotApi(method, vmId, kind, rest, body, res, true);
      });
      return res;
    }
    const fail = this.failNext.get(op);
    if (fail) {
      this.failNext.delete(op);
      return error(fail.status, fail.code, fail.message);
    }
    const name = decodeURIComponent(rest.split('/')[1] ?? '');
    if (kind === 'credentials') {
      if (method === 'PUT') {
        if (!running) return error(409, 'VM_NOT_RUNNING', `VM ${vmId} is not running`);
        this.credentials.set(vmId, JSON.parse(body));
      } else this.credentials.delete(vmId);
      return send(204);
    }
    if (op === 'GET snapshots') return send(200, { snapshots: [...snaps.values()] });
    if (op === 'POST snapshots') {
      if (!running) return error(409, 'VM_NOT_RUNNING', `VM ${vmId} is not running`);
      const req = JSON.parse(body) as { name?: string; reuse?: boolean };
      const n = req.name ?? `snap-${++this.#made}`;
      const old = snaps.get(n);
      if (old && !req.reuse) return error(409, 'CONFLICT', `snapshot ${n} exists`);
      if (old && !this.#dirty.has(vmId) && this.#at.get(vmId) === n)
        return send(201, { snapshot: old, reused: true });
      const snapshot: Snapshot = {
        name: n,
        createdAt: new Date().toISOString(),
        parent: this.#at.get(vmId) ?? null,
        memory: 'mapped',
        bytes: this.snapshotBytes,
        pausedMs: 1,
      };
      snaps.set(n, snapshot);
      this.#at.set(vmId, n);
      this.#dirty.delete(vmId);
      return send(201, { snapshot, reused: false });
    }
    const snapshot = snaps.get(name);
    if (!snapshot) return error(404, 'NOT_FOUND', `no snapshot ${name}`);
    if (op === 'POST snapshots/revert') {
      if (!running) return error(409, 'VM_NOT_RUNNING', `VM ${vmId} is not running`);
      this.#at.set(vmId, name);
      this.#dirty.delete(vmId);
      // As the real agent: a revert discards the guest's memory, credentials with it.
      this.credentials.delete(vmId);
      this.reverts.push({ vmId, name });
      return send(200, { snapshot, revertMs: 1 });
    }
    if (op === 'GET snapshots/changes')
      return send(200, { since: name, changes: this.changes, truncated: false });
    if (op === 'DELETE snapshots/:name') {
      snaps.delete(name);
      return send(204);
    }
    return error(404, 'NOT_FOUND', `no route ${op}`);
  }

  /**
   * The fake's guest files: its data volume's chunks, `/workspace/chunk-<i>` (what a restore's
   * `sampleFiles` digests and a guest's `sha256sum` reads back).
   */
  static chunkFiles(data: Buffer, max: number): FileDigest[] {
    const out: FileDigest[] = [];
    for (let i = 0; i * CHUNK_SIZE < data.length && out.length < max; i++) {
      const bytes = data.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE);
      out.push({
        path: `/workspace/chunk-${i}`,
        size: bytes.length,
        sha256: createHash('sha256').update(bytes).digest('hex'),
      });
    }
    return out;
  }

  /** Changes what the guest's sha256sum says of a file (a guest whose files differ from the host's reading). */
  guestDigest: ((vmId: string, path: string, sha256: string) => string) | undefined;

  /** Answers an exec of `sha256sum -- PATHS...` from the VM's volume; false for any other command. */
  #sha256sum(vmId: string, body: string, res: ServerResponse): boolean {
    let argv: unknown;
    try {
      argv = (JSON.parse(body) as { argv?: unknown }).argv;
    } catch {
      return false;
    }
    if (!Array.isArray(argv) || argv[0] !== 'sha256sum' || argv[1] !== '--') return false;
    const files = new Map(FakeAgent.chunkFiles(this.volumeOf(vmId).data, Infinity).map((f) => [f.path, f]));
    let stdout = '';
    let stderr = '';
    for (const path of argv.slice(2) as string[]) {
      const f = files.get(path);
      if (f) stdout += `${this.guestDigest?.(vmId, path, f.sha256) ?? f.sha256}  ${path}\n`;
      else stderr += `sha256sum: ${path}: No such file or directory\n`;
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.write(`${JSON.stringify({ stdout: Buffer.from(stdout).toString('base64') })}\n`);
    if (stderr) res.write(`${JSON.stringify({ stderr: Buffer.from(stderr).toString('base64') })}\n`);
    res.end(
      `${JSON.stringify({ exit: { exitCode: stderr ? 1 : 0, signal: null, timedOut: false, durationMs: 1 } })}\n`,
    );
    return true;
  }

  /** Opens the object store backup jobs use (the control plane's, in tests: one machine). */
  useObjectStore(root: string): this {
    this.#objects = createObjectStore({ kind: 'fs', root });
    return this;
  }

  /** Forgets every job, as an agent that restarted would. */
  forgetJobs(): void {
    this.jobs.clear();
  }

  /** A VM's data volume: deterministic, distinct per VM, with a zero chunk and a short last chunk. */
  volumeOf(vmId: string): { data: Buffer; root?: Buffer } {
    let v = this.volumes.get(vmId);
    if (!v) {
      const data = Buffer.alloc(3 * CHUNK_SIZE + 4096);
      for (let i = 0; i < data.length; i += 64) data.write(`${vmId}:${i};`, i);
      data.fill(0, CHUNK_SIZE, 2 * CHUNK_SIZE);
      v = { data };
      this.volumes.set(vmId, v);
    }
    return v;
  }

  #jobApi(
    method: string,
    vmId: string | undefined,
    kind: string | undefined,
    jobId: string | undefined,
    body: string,
    res: ServerResponse,
  ): ServerResponse {
    const send = (status: number, value: unknown) =>
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
    const error = (status: number, code: string, message: string) =>
      send(status, { error: { code, message, fix: '' } });
    if (jobId !== undefined) {
      const j = this.jobs.get(jobId);
      return j && method === 'GET' ? send(200, j) : error(404, 'NOT_FOUND', `no backup job ${jobId}`);
    }
    if (method !== 'POST' || !vmId) return error(404, 'NOT_FOUND', 'no such route');
    if (!this.desired.some((d) => d.vmId === vmId)) return error(404, 'VM_NOT_FOUND', `no VM ${vmId}`);
    const objects = this.#objects;
    if (!objects) return error(409, 'BACKUPS_UNSUPPORTED', 'this fake agent has no object store');
    const fail = this.failNext.get(`POST ${kind}`);
    if (fail) {
      this.failNext.delete(`POST ${kind}`);
      return error(fail.status, fail.code, fail.message);
    }
    const keysOf = (k: { tenant: string; image?: string | undefined }): BackupKeyBuffers => ({
      tenant: Buffer.from(k.tenant, 'base64'),
      ...(k.image ? { image: Buffer.from(k.image, 'base64') } : {}),
    });
    const zero = { bytesTotal: 0, bytesDone: 0, bytesTransferred: 0, chunksNew: 0, chunksReused: 0 };
    if (kind === 'backups') {
      const req = HostBackupRequest.parse(JSON.parse(body));
      const j: BackupJob = {
        id: req.id,
        kind: 'backup',
        state: 'running',
        progress: zero,
        result: null,
        error: null,
      };
      this.jobs.set(j.id, j);
      const started = Date.now();
      const v = this.volumeOf(vmId);
      const gate = this.backupGate;
      const source = (name: 'data' | 'root', buf: Buffer): VolumeSource => ({
        name,
        size: buf.length,
        read: async (offset, length) => {
          if (offset > 0 && gate) await gate;
          return Buffer.from(buf.subarray(offset, offset + length));
        },
      });
      const pointInTime = this.pointInTime?.() ?? new Date().toISOString();
      j.progress = { ...zero, bytesTotal: v.data.length };
      void (async () => {
        try {
          const keys = keysOf(req.keys);
          const previous = req.previous
            ? await readManifest(objects, keys.tenant, req.previous).catch(() => undefined)
            : undefined;
          const volumes = [
            source('data', v.data),
            ...(req.includeRoot && v.root ? [source('root', v.root)] : []),
          ];
          const r = await writeBackup({
            store: objects,
            keys,
            id: req.id,
            pointInTime,
            metadata: req.metadata as never,
            volumes,
            ...(previous ? { previous } : {}),
            onProgress: (p) => {
              j.progress = p;
            },
          });
          j.progress = { ...j.progress, bytesDone: j.progress.bytesTotal };
          j.result = {
            pointInTime,
            volumes: volumes.map((x) => ({ name: x.name, sizeBytes: x.size, chunks: 0 })),
            storedBytes: r.storedBytes,
            mode: 'full',
            reason: 'fake agent',
            durationMs: Date.now() - started,
          };
          j.state = 'succeeded';
        } catch (e) {
          j.state = 'failed';
          j.error = {
            code: (e as { code?: string }).code ?? 'INTERNAL',
            message: String((e as Error).message),
          };
        }
      })();
      return send(202, j);
    }
    const req = HostRestoreRequest.parse(JSON.parse(body));
    const restoreGate = this.restoreGate;
    const j: BackupJob = {
      id: req.job,
      kind: 'restore',
      state: 'running',
      progress: zero,
      result: null,
      error: null,
    };
    this.jobs.set(j.id, j);
    void (async () => {
      try {
        await restoreGate;
        const keys = keysOf(req.keys);
        const manifest = await readManifest(objects, keys.tenant, req.backup);
        const restored: { data: Buffer; root?: Buffer } = { data: Buffer.alloc(0) };
        for (const vol of manifest.volumes) {
          const buf = Buffer.alloc(vol.size);
          await restoreVolume({
            store: objects,
            keys,
            manifest,
            backupId: req.backup,
            volume: vol.name,
            write: async (offset, b) => {
              b.copy(buf, offset);
            },
            onProgress: (p) => {
              j.progress = p;
            },
          });
          restored[vol.name] = buf;
        }
        // As the real agent: switched only once everything was read and checked.
        this.volumes.set(vmId, { ...this.volumeOf(vmId), ...restored });
        this.restores.push({ vmId, backup: req.backup, start: req.start ?? 'as-before' });
        j.result = {
          pointInTime: manifest.pointInTime,
          volumes: [],
          storedBytes: 0,
          mode: 'full',
          durationMs: 1,
          ...(req.sampleFiles
            ? { sample: { files: FakeAgent.chunkFiles(restored.data, req.sampleFiles) } }
            : {}),
        };
        j.state = 'succeeded';
      } catch (e) {
        j.state = 'failed';
        j.error = {
          code: (e as { code?: string }).code ?? 'INTERNAL',
          message: String((e as Error).message),
        };
      }
    })();
    return send(202, j);
  }

  async #held(res: ServerResponse, last: string): Promise<void> {
    this.streaming++;
    await this.gate;
    this.streaming--;
    res.end(last);
  }

  cpUrl = '';

  get token(): string {
    return this.#token;
  }

  /** One heartbeat: reports every desired tenant as converged, returns the new desired state. */
  async heartbeat(): Promise<HeartbeatResponse> {
    const vms = this.desired
      .filter((d) => d.desiredState !== 'absent')
      .map(
        (d): ReportedVm => ({
          tenantId: d.tenantId,
          state: d.desiredState === 'running' ? ('running' as const) : ('stopped' as const),
          generation: d.generation,
          error: null,
          ...this.report.get(d.tenantId),
        }),
      );
    const res = await call(this.cpUrl, 'POST', '/v1/agent/heartbeat', {
      token: this.#token,
      body: {
        agentVersion: 'fake',
        capacity: this.capacity,
        health: 'ok',
        images: this.images.map((id) => ({
          id,
          profile: this.imageProfiles.get(id) ?? 'standard',
          createdAt: '2026-01-01T00:00:00.000Z',
        })),
        vms,
        ...(this.quarantined ? { quarantined: this.quarantined } : {}),
      },
    });
    if (res.status !== 200) throw new Error(`heartbeat failed: ${res.text}`);
    this.desired = res.body.tenants;
    return res.body;
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    // A half-closed tunnel would hold server.close() forever.
    for (const socket of this.#tunnels) socket.destroy();
    await new Promise<void>((r) => (this.#server ? this.#server.close(() => r()) : r()));
    await this.#objects?.close();
  }
}

/**
 * Creates a tenant and an API key for it, as the admin; both must succeed. Returns the answers'
 * bodies: `tenant` and `operation`, and the key's `token` and `key`.
 */
export async function createTenantWithKey(
  t: TestControlPlane,
  tenant: { name: string; image?: string; [field: string]: unknown },
  // biome-ignore lint/suspicious/noExplicitAny: the API's JSON, as `call` returns it
): Promise<{ created: any; key: any }> {
  const created = await call(t.url, 'POST', '/v1/tenants', {
    token: t.adminToken,
    body: { image: FAKE_IMAGE, ...tenant },
  });
  assert.equal(created.status, 202, created.text);
  const key = await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: tenant.name } });
  assert.equal(key.status, 201, key.text);
  return { created: created.body, key: key.body };
}

/** Heartbeats the agents until every tenant runs. */
export function convergeAllRunning(t: TestControlPlane, agents: FakeAgent[]): Promise<void> {
  return converge(agents, async () => {
    const r = await call(t.url, 'GET', '/v1/tenants', { token: t.adminToken });
    return r.body.tenants.every((x: { state: string }) => x.state === 'running');
  });
}

/** Heartbeats every agent until `check` holds (each round lets the fake agents converge). */
export async function converge(
  agents: FakeAgent[],
  check: () => Promise<boolean>,
  rounds = 10,
): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    for (const a of agents) await a.heartbeat();
    if (await check()) return;
  }
  throw new Error('did not converge');
}

/**
 * A GET to `url` with another Host header: how a browser's request to a dashboard origin
 * (`<tenant>.<domain>`) reaches the control plane, which fetch() cannot send.
 */
export function getWithHost(
  url: string,
  host: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers: { host, ...headers } });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}
