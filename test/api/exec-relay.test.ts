/**
 * The control plane's exec relay and file download as a stalled client uses them: a host agent
 * whose command floods its output (an agent API that writes as fast as the control plane takes
 * it) and a client that reads nothing. What the control plane took from the agent and did not
 * deliver is in its memory, except what the kernel's socket buffers hold (measured from
 * /proc/net/tcp and taken off); it must stay bounded.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { call, FAKE_IMAGE, FakeAgent, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';
import { until } from '../helpers/until.ts';

const MiB = 1024 * 1024;
/** Stream buffers of the relay (fetch's body queue, the reply's buffer): a few hundred KiB. */
const BOUND = 16 * MiB;

let t: TestControlPlane;
let agentApi: Server;
let agentPort = 0;
let agent: FakeAgent;
let key = '';
/** Bytes the "agent" has handed to the control plane's connection so far. */
let sent = 0;
const agentToken = randomBytes(32).toString('base64url');

/** Writes `chunk` for ever, as fast as the reader (the control plane) takes it. */
function flood(res: ServerResponse, chunk: Buffer): void {
  const pump = () => {
    while (!res.destroyed) {
      sent += chunk.length;
      if (!res.write(chunk)) return void res.once('drain', pump);
    }
  };
  res.on('error', () => {});
  pump();
}

before(async () => {
  t = await openTestControlPlane();
  const line = Buffer.from(`${JSON.stringify({ stdout: Buffer.alloc(48 * 1024).toString('base64') })}\n`);
  const block = Buffer.alloc(256 * 1024);
  agentApi = createServer((req, res) => {
    req.resume();
    if (req.headers.authorization !== `Bearer ${agentToken}`) return void res.writeHead(401).end();
    if (req.url?.endsWith('/exec')) {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      flood(res, line);
    } else if (req.url?.includes('/files')) {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      flood(res, block);
    } else res.writeHead(204).end();
  });
  await new Promise<void>((r) => agentApi.listen(0, '127.0.0.1', r));
  agentPort = (agentApi.address() as AddressInfo).port;
  agent = await new FakeAgent('flood-host', { vcpus: 8, memoryMiB: 8192, diskMiB: 100_000 }).start(
    t.url,
    t.joinToken,
    0,
    { address: `http://127.0.0.1:${agentPort}`, agentToken },
  );
  const created = await call(t.url, 'POST', '/v1/tenants', {
    token: t.adminToken,
    body: { name: 'flood', image: FAKE_IMAGE },
  });
  assert.equal(created.status, 202, created.text);
  key = (await call(t.url, 'POST', '/v1/keys', { token: t.adminToken, body: { tenant: 'flood' } })).body
    .token;
  await until('the tenant runs', async () => {
    await agent.heartbeat();
    return (await call(t.url, 'GET', '/v1/tenants/flood', { token: key })).body?.state === 'running';
  });
});

after(async () => {
  await agent?.stop();
  agentApi?.closeAllConnections();
  await new Promise<void>((r) => (agentApi ? agentApi.close(() => r()) : r()));
  await t?.close();
});

/** Bytes the kernel holds for the TCP connections that have one end on one of `ports`. */
function kernelQueued(ports: number[]): number {
  const on = new Set(ports);
  let sum = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    const local = Number.parseInt(f[1]!.split(':')[1]!, 16);
    const remote = Number.parseInt(f[2]!.split(':')[1]!, 16);
    if (!on.has(local) && !on.has(remote)) continue;
    const [tx, rx] = f[4]!.split(':').map((h) => Number.parseInt(h, 16));
    sum += tx! + rx!;
  }
  return sum;
}

function stalledRequest(method: string, path: string, body?: unknown): Socket {
  const { port } = new URL(t.url);
  const payload = body === undefined ? '' : JSON.stringify(body);
  const socket = connect(Number(port), '127.0.0.1');
  socket.on('error', () => {});
  socket.write(
    `${method} ${path} HTTP/1.1\r\nhost: cp\r\nauthorization: Bearer ${key}\r\n` +
      (payload ? `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n` : '') +
      `\r\n${payload}`,
  );
  socket.pause();
  return socket;
}

/** Like the host agent's test: wait for a plateau, or stop once far past the bound. */
async function plateau(bytes: () => number): Promise<number> {
  let last = -1;
  let same = 0;
  return until(
    'the flood is held back or passes the bound',
    () => {
      const v = bytes();
      if (v > 4 * BOUND) return v;
      same = v === last ? same + 1 : 0;
      last = v;
      return same >= 5 ? v : false;
    },
    60_000,
    200,
  );
}

describe('a stalled client of the control plane (finding 3)', () => {
  for (const [name, method, path, body] of [
    ['exec output', 'POST', '/v1/tenants/flood/exec', { argv: ['cat', '/dev/zero'] }],
    ['a file download', 'GET', '/v1/tenants/flood/files?path=/dev/zero', undefined],
  ] as const) {
    test(`cannot make the control plane buffer ${name}`, async () => {
      const start = sent;
      const socket = stalledRequest(method, path, body);
      try {
        await until('the agent is asked', () => sent > start);
        const held = await plateau(() => sent - start - kernelQueued([agentPort, socket.localPort!]));
        assert.ok(held < BOUND, `the control plane holds ${held} bytes nobody read (bound ${BOUND})`);
      } finally {
        socket.destroy();
      }
    });
  }
});
