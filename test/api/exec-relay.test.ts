/**
 * The control plane's exec relay and file download as a stalled client uses them: a host agent
 * whose command floods its output (an agent API that writes as fast as the control plane takes
 * it) and a client that reads nothing. What the control plane took from the agent and did not
 * deliver is in its memory, except what the kernel's socket buffers hold (measured from
 * /proc/net/tcp and taken off); it must stay bounded.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  call,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { kernelQueuedOnPorts, plateau, stalledRequest } from '../helpers/stalled-reader.ts';
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
  key = (await createTenantWithKey(t, { name: 'flood' })).key.token;
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

describe('a stalled client of the control plane (finding 3)', () => {
  for (const [name, method, path, body] of [
    ['exec output', 'POST', '/v1/tenants/flood/exec', { argv: ['cat', '/dev/zero'] }],
    ['a file download', 'GET', '/v1/tenants/flood/files?path=/dev/zero', undefined],
  ] as const) {
    test(`cannot make the control plane buffer ${name}`, async () => {
      const start = sent;
      const socket = stalledRequest(Number(new URL(t.url).port), method, path, {
        body,
        headers: [`authorization: Bearer ${key}`],
      });
      try {
        await until('the agent is asked', () => sent > start);
        const held = await plateau(
          () => sent - start - kernelQueuedOnPorts([agentPort, socket.localPort!]),
          BOUND,
        );
        assert.ok(held < BOUND, `the control plane holds ${held} bytes nobody read (bound ${BOUND})`);
      } finally {
        socket.destroy();
      }
    });
  }
});
