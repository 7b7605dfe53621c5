/**
 * The SDK against a small HTTP server in this file that plays the control plane: errors,
 * network failures, the exec NDJSON stream, operation polling and path encoding. The real
 * control plane is covered by the end-to-end tests. Every test runs twice: over node's global
 * fetch, and over `nodeFetch`, the node:http transport the CLI uses.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Operation, Tenant } from '@warren/protocol';
import { nodeFetch, WarrenClient, WarrenError } from '@warren/sdk';
import { freePort } from '../helpers/free-port.ts';

type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => unknown;

let handler: Handler = (_req, res) => res.writeHead(500).end();
const seen: { method: string; url: string; auth: string | undefined; body: Buffer }[] = [];
let server: Server;
let baseUrl = '';
let warren: WarrenClient;

const TRANSPORTS: { name: string; fetch: () => typeof fetch | undefined }[] = [
  { name: 'global fetch', fetch: () => undefined },
  { name: 'nodeFetch (the CLI)', fetch: () => nodeFetch() },
];
/** A client over the transport under test. */
let client: (url: string, token: string) => WarrenClient = (url, token) => new WarrenClient({ url, token });

before(async () => {
  server = createServer(async (req, res) => {
    const parts: Buffer[] = [];
    for await (const c of req) parts.push(c);
    const body = Buffer.concat(parts);
    seen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, body });
    await handler(req, res, body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  baseUrl = `http://127.0.0.1:${port}/`;
});
after(
  () =>
    new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    }),
);
beforeEach(() => {
  seen.length = 0;
});

function json(res: ServerResponse, status: number, value: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
}

const NOW = '2025-01-01T00:00:00.000Z';
const tenant = (state: Tenant['state'] = 'running'): Tenant => ({
  id: 'ten_0123456789abcdef',
  name: 'demo',
  state,
  desiredState: 'running',
  imageId: `sha256:${'a'.repeat(64)}`,
  vcpus: 1,
  memoryMiB: 512,
  diskMiB: 1024,
  quota: { vcpus: 4, memoryMiB: 4096, diskMiB: 10240 },
  network: { egress: 'internet', allowlist: [], bandwidthMbit: null },
  dashboardPort: 8080,
  hostId: 'host_0123456789abcdef',
  hostHealthy: true,
  lastError: null,
  attempts: null,
  idleTimeout: { setting: null, effective: '30m' },
  createdAt: NOW,
  updatedAt: NOW,
});
const operation = (status: Operation['status'], error: Operation['error'] = null): Operation => ({
  id: 'op_0123456789abcdef',
  kind: 'create',
  tenantId: 'ten_0123456789abcdef',
  tenantName: 'demo',
  status,
  error,
  createdAt: NOW,
  updatedAt: NOW,
});

for (const transport of TRANSPORTS) {
  describe(transport.name, () => {
    before(() => {
      client = (url, token) => {
        const f = transport.fetch();
        return new WarrenClient({ url, token, ...(f ? { fetch: f } : {}) });
      };
      warren = client(baseUrl, 'tok-123');
    });

    describe('errors', () => {
      test('an error body becomes a WarrenError with its code and message', async () => {
        handler = (_req, res) =>
          json(res, 409, { error: { code: 'NO_CAPACITY', message: 'no host has 64 vCPUs free', fix: 'x' } });
        await assert.rejects(warren.tenants.create({ name: 'demo', vcpus: 64 }), (e) => {
          assert.ok(e instanceof WarrenError);
          assert.equal(e.code, 'NO_CAPACITY');
          assert.equal(e.message, 'no host has 64 vCPUs free');
          return true;
        });
        assert.equal(seen[0]!.auth, 'Bearer tok-123');
        assert.deepEqual(JSON.parse(seen[0]!.body.toString()), { name: 'demo', vcpus: 64 });
      });

      test('a body that is not a Warren error falls back to a code from the HTTP status', async () => {
        handler = (_req, res) =>
          res.writeHead(502, { 'content-type': 'text/html' }).end('<h1>Bad Gateway</h1>');
        await assert.rejects(warren.tenants.get('demo'), {
          code: 'API_UNREACHABLE',
          message: /HTTP 502.*Bad Gateway/,
        });
        handler = (_req, res) => res.writeHead(401).end();
        await assert.rejects(warren.hosts.list(), { code: 'UNAUTHENTICATED' });
      });

      test('an unreachable URL gives API_UNREACHABLE naming the URL and the cause', async () => {
        const port = await freePort();
        const dead = client(`http://127.0.0.1:${port}`, 't');
        await assert.rejects(dead.health(), (e) => {
          assert.ok(e instanceof WarrenError);
          assert.equal(e.code, 'API_UNREACHABLE');
          assert.match(
            e.message,
            new RegExp(`cannot reach the Warren API at http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`),
          );
          return true;
        });
      });

      test('a response of the wrong shape is an INTERNAL error, not a crash later', async () => {
        handler = (_req, res) => json(res, 200, { id: 'nope' });
        await assert.rejects(warren.tenants.get('demo'), { code: 'INTERNAL', message: /unexpected shape/ });
      });

      test('requests are validated before they are sent', async () => {
        await assert.rejects(warren.tenants.create({ name: 'Not A Name' }), { code: 'INVALID_ARGUMENT' });
        assert.equal(seen.length, 0);
      });
    });

    describe('paths', () => {
      test('each name is one encoded path segment, so it cannot escape its collection', async () => {
        handler = (_req, res) =>
          json(res, 404, { error: { code: 'NOT_FOUND', message: 'no such tenant', fix: '' } });
        await assert.rejects(warren.tenants.get('a/../b'), { code: 'NOT_FOUND' });
        await assert.rejects(warren.tenants.stop('x?y#z'), { code: 'NOT_FOUND' });
        await assert.rejects(warren.hosts.drain('a/b'), { code: 'NOT_FOUND' });
        await assert.rejects(warren.keys.revoke('../hosts'), { code: 'NOT_FOUND' });
        assert.deepEqual(
          seen.map((s) => `${s.method} ${s.url}`),
          [
            'GET /v1/tenants/a%2F..%2Fb',
            'POST /v1/tenants/x%3Fy%23z/stop',
            'POST /v1/hosts/a%2Fb/drain',
            'DELETE /v1/keys/..%2Fhosts',
          ],
        );
      });

      test('`.` and `..` are refused: URL parsers would collapse them', async () => {
        for (const ref of ['..', '.', '']) {
          await assert.rejects(warren.tenants.delete(ref), { code: 'INVALID_ARGUMENT' });
        }
        assert.equal(seen.length, 0);
      });

      test('query values are encoded', async () => {
        handler = (_req, res) => json(res, 200, { tenants: [tenant()] });
        const list = await warren.tenants.list({ state: 'running', host: 'h-1' });
        assert.equal(list[0]!.name, 'demo');
        handler = (_req, res) => res.writeHead(200).end('hi');
        assert.equal((await warren.tenants.downloadBuffer('demo', '/tmp/a b&c=d')).toString(), 'hi');
        assert.deepEqual(
          seen.map((s) => s.url),
          ['/v1/tenants?state=running&host=h-1', '/v1/tenants/demo/files?path=%2Ftmp%2Fa+b%26c%3Dd'],
        );
      });
    });

    describe('exec', () => {
      const b64 = (s: string) => Buffer.from(s).toString('base64');

      /** Writes `text` in pieces of `size` bytes with pauses, so lines arrive split. */
      async function dribble(res: ServerResponse, text: string, size: number) {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        for (let i = 0; i < text.length; i += size) {
          res.write(text.slice(i, i + size));
          await sleep(2);
        }
        res.end();
      }

      test('parses the NDJSON stream with lines split across chunks', async () => {
        const stream = [
          { stdout: b64('hello ') },
          { stderr: b64('warn\n') },
          { stdout: b64('world\n') },
          { future: 'ignored' },
          { exit: { exitCode: 3, signal: null, timedOut: false, durationMs: 12 } },
        ]
          .map((l) => JSON.stringify(l))
          .join('\n');
        handler = (_req, res) => dribble(res, `${stream}\n`, 5);
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        const exit = await warren.tenants.exec(
          'demo',
          { argv: ['sh', '-c', 'x'], stdin: Buffer.from('in') },
          { onStdout: (b) => out.push(b), onStderr: (b) => err.push(b) },
        );
        assert.deepEqual(exit, { exitCode: 3, signal: null, timedOut: false, durationMs: 12 });
        assert.equal(Buffer.concat(out).toString(), 'hello world\n');
        assert.equal(Buffer.concat(err).toString(), 'warn\n');
        assert.ok(out.every((b) => Buffer.isBuffer(b)));
        assert.deepEqual(JSON.parse(seen[0]!.body.toString()), { argv: ['sh', '-c', 'x'], stdin: b64('in') });
        assert.equal(seen[0]!.url, '/v1/tenants/demo/exec');
      });

      test('the last line may lack its newline', async () => {
        handler = (_req, res) =>
          dribble(
            res,
            JSON.stringify({ exit: { exitCode: 0, signal: null, timedOut: false, durationMs: 1 } }),
            3,
          );
        assert.equal((await warren.tenants.exec('demo', { argv: ['true'] })).exitCode, 0);
      });

      test('an error line throws a WarrenError with its code', async () => {
        const lines = `${JSON.stringify({ stdout: b64('partial') })}\n${JSON.stringify({
          error: { code: 'HOST_UNAVAILABLE', message: 'host h1 stopped answering', fix: '' },
        })}\n`;
        handler = (_req, res) => dribble(res, lines, 4);
        let out = '';
        await assert.rejects(
          warren.tenants.exec('demo', { argv: ['true'] }, { onStdout: (b) => (out += b) }),
          {
            code: 'HOST_UNAVAILABLE',
            message: 'host h1 stopped answering',
          },
        );
        assert.equal(out, 'partial');
      });

      test('a stream that ends without an exit line is an error', async () => {
        handler = (_req, res) => dribble(res, `${JSON.stringify({ stdout: b64('x') })}\n`, 100);
        await assert.rejects(warren.tenants.exec('demo', { argv: ['true'] }), { code: 'API_UNREACHABLE' });
      });

      test('aborting drops the stream and rejects with CONFLICT', async () => {
        let closed = false;
        handler = (req, res) => {
          res.writeHead(200, { 'content-type': 'application/x-ndjson' });
          res.write(`${JSON.stringify({ stdout: b64('started') })}\n`);
          req.socket.once('close', () => (closed = true));
        };
        const abort = new AbortController();
        await assert.rejects(
          warren.tenants.exec(
            'demo',
            { argv: ['sleep', '60'] },
            { onStdout: () => abort.abort(), signal: abort.signal },
          ),
          { code: 'CONFLICT' },
        );
        // The server sees the connection go, which is how it knows to kill the command.
        while (!closed) await sleep(5);
      });

      test('an error answer before the stream starts is a WarrenError', async () => {
        handler = (_req, res) =>
          json(res, 409, { error: { code: 'TENANT_NOT_RUNNING', message: 'demo is stopped', fix: '' } });
        await assert.rejects(warren.tenants.exec('demo', { argv: ['true'] }), { code: 'TENANT_NOT_RUNNING' });
      });
    });

    describe('operations.wait', () => {
      test('polls until the operation is done and reports the tenant state', async () => {
        let polls = 0;
        const states: string[] = [];
        handler = (req, res) => {
          if (req.url!.startsWith('/v1/operations/')) {
            polls++;
            return json(res, 200, operation(polls < 3 ? 'running' : 'succeeded'));
          }
          json(res, 200, tenant((['provisioning', 'starting', 'running'] as const)[polls - 1]));
        };
        const op = await warren.operations.wait('op_0123456789abcdef', {
          intervalMs: 5,
          onProgress: (p) => states.push(p.tenant!.state),
        });
        assert.equal(op.status, 'succeeded');
        assert.equal(polls, 3);
        assert.deepEqual(states, ['provisioning', 'starting', 'running']);
      });

      test('a failed operation throws its error code', async () => {
        let polls = 0;
        handler = (_req, res) =>
          json(
            res,
            200,
            ++polls < 2
              ? operation('running')
              : operation('failed', { code: 'VM_BOOT_FAILED', message: 'the guest did not boot in 120 s' }),
          );
        await assert.rejects(warren.operations.wait('op_0123456789abcdef', { intervalMs: 5 }), {
          code: 'VM_BOOT_FAILED',
          message: /create of tenant demo failed: the guest did not boot/,
        });
        assert.equal(polls, 2);
      });

      test('gives up with TIMEOUT after timeoutMs', async () => {
        handler = (_req, res) => json(res, 200, operation('running'));
        await assert.rejects(
          warren.operations.wait('op_0123456789abcdef', { intervalMs: 10, timeoutMs: 50 }),
          {
            code: 'TIMEOUT',
          },
        );
      });
    });

    describe('files', () => {
      test('upload streams a Node stream and download returns one', async () => {
        handler = (_req, res, body) => json(res, 201, { path: '/data/x', bytes: body.length });
        const written = await warren.tenants.upload(
          'demo',
          '/data/x',
          Readable.from([Buffer.from('ab'), Buffer.from('cd')]),
        );
        assert.deepEqual(written, { path: '/data/x', bytes: 4 });
        assert.equal(seen[0]!.body.toString(), 'abcd');
        assert.equal(seen[0]!.method, 'PUT');

        handler = (_req, res) =>
          res.writeHead(200, { 'content-type': 'application/octet-stream' }).end('file data');
        const stream = await warren.tenants.download('demo', '/data/x');
        let text = '';
        for await (const c of stream) text += c;
        assert.equal(text, 'file data');
      });

      test('relative paths and `..` are refused before sending', async () => {
        await assert.rejects(warren.tenants.upload('demo', 'rel', Buffer.from('x')), {
          code: 'INVALID_ARGUMENT',
        });
        await assert.rejects(warren.tenants.download('demo', '/a/../etc/shadow'), {
          code: 'INVALID_ARGUMENT',
        });
        assert.equal(seen.length, 0);
      });
    });

    describe('backups', () => {
      const backup = (state: 'running' | 'complete' | 'failed', done = 0) => ({
        id: 'bak_00000000000000aa',
        tenantId: 'ten_0000000000000001',
        tenantName: 'demo',
        state,
        trigger: 'manual',
        includeRoot: false,
        createdAt: NOW,
        completedAt: state === 'running' ? null : NOW,
        pointInTime: state === 'complete' ? NOW : null,
        sizeBytes: 100,
        storedBytes: 10,
        mode: state === 'complete' ? 'full' : null,
        progress: { bytesTotal: 100, bytesDone: done, bytesTransferred: 0, chunksNew: 0, chunksReused: 0 },
        error: state === 'failed' ? { code: 'BACKUP_KEY_REJECTED', message: 'no' } : null,
      });

      test('wait polls until complete, reporting progress', async () => {
        let n = 0;
        handler = (_req, res) =>
          json(res, 200, n++ < 2 ? backup('running', n * 40) : backup('complete', 100));
        const progress: number[] = [];
        const done = await warren.backups.wait('demo', 'bak_00000000000000aa', {
          intervalMs: 1,
          onProgress: (b) => progress.push(b.progress!.bytesDone),
        });
        assert.equal(done.state, 'complete');
        assert.deepEqual(progress, [40, 80, 100]);
        assert.equal(seen[0]!.url, '/v1/tenants/demo/backups/bak_00000000000000aa');
      });

      test('a failed backup throws its error code naming the backup', async () => {
        handler = (_req, res) => json(res, 200, backup('failed'));
        await assert.rejects(
          warren.backups.wait('demo', 'bak_00000000000000aa', { intervalMs: 1 }),
          (e: WarrenError) => {
            assert.equal(e.code, 'BACKUP_KEY_REJECTED');
            assert.match(e.message, /bak_00000000000000aa/);
            return true;
          },
        );
      });

      test('ids are checked before anything is sent; restore sends newTenant', async () => {
        await assert.rejects(warren.backups.get('demo', '../keys'), { code: 'INVALID_ARGUMENT' });
        await assert.rejects(
          warren.backups.restore('demo', 'bak_00000000000000aa', { newTenant: 'Bad Name' }),
          {
            code: 'INVALID_ARGUMENT',
          },
        );
        assert.equal(seen.length, 0);
        handler = (_req, res) =>
          json(res, 202, {
            tenant: tenant(),
            operation: {
              id: 'op_0000000000000001',
              kind: 'restore',
              tenantId: 'ten_0000000000000001',
              tenantName: 'demo',
              status: 'running',
              error: null,
              progress: null,
              createdAt: NOW,
              updatedAt: NOW,
            },
          });
        const r = await warren.backups.restore('demo', 'bak_00000000000000aa', { newTenant: 'demo-copy' });
        assert.equal(r.operation.kind, 'restore');
        assert.equal(seen[0]!.url, '/v1/tenants/demo/backups/bak_00000000000000aa/restore');
        assert.deepEqual(JSON.parse(seen[0]!.body.toString()), { newTenant: 'demo-copy' });
      });
    });

    describe('idle timeouts and hosts', () => {
      test('tenants.update sends the idle timeout; a bad one is refused before any request', async () => {
        handler = (_req, res) =>
          json(res, 200, { ...tenant(), idleTimeout: { setting: '15m', effective: '15m' } });
        const t = await warren.tenants.update('demo', { idleTimeout: '15m' });
        assert.deepEqual(t.idleTimeout, { setting: '15m', effective: '15m' });
        assert.equal(seen[0]!.method, 'PATCH');
        assert.equal(seen[0]!.url, '/v1/tenants/demo');
        assert.deepEqual(JSON.parse(seen[0]!.body.toString()), { idleTimeout: '15m' });
        await assert.rejects(warren.tenants.update('demo', { idleTimeout: '5s' }), {
          code: 'INVALID_ARGUMENT',
          message: /shorter than the minimum of 10s/,
        });
        assert.equal(seen.length, 1);
      });

      test('hosts.remove passes force as a query; hosts.adopt names the VM in the path', async () => {
        handler = (_req, res) => json(res, 200, { host: 'vm1', lostTenants: ['demo'] });
        assert.deepEqual(await warren.hosts.remove('vm1', { force: true }), {
          host: 'vm1',
          lostTenants: ['demo'],
        });
        assert.equal(seen[0]!.method, 'DELETE');
        assert.equal(seen[0]!.url, '/v1/hosts/vm1?force=true');
        await warren.hosts.remove('vm1');
        assert.equal(seen[1]!.url, '/v1/hosts/vm1');
        handler = (_req, res) => json(res, 201, tenant('pending'));
        await warren.hosts.adopt('vm1', 'ten-00000000000000aa', 'rescued');
        assert.equal(seen[2]!.url, '/v1/hosts/vm1/quarantine/ten-00000000000000aa/adopt');
        assert.deepEqual(JSON.parse(seen[2]!.body.toString()), { name: 'rescued' });
      });
    });
  });
}
