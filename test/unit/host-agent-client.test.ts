/**
 * `HostAgentClient` (what `warren image` and `warren vm run` use) against a small server in this
 * file on a unix socket that plays the host agent's local API: the image build's NDJSON stream,
 * its error line, and what the operator reads when no agent listens. The real agent is covered
 * by test/vm/cli.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { HostAgentClient, hostAgentSocket, WarrenError } from '@warren/sdk';

let dir = '';
let server: Server;
let handler: (req: IncomingMessage, res: ServerResponse, body: string) => void = (_q, res) =>
  res.writeHead(500).end();
let agent: HostAgentClient;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'wt-hac-'));
  server = createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    handler(req, res, body);
  });
  await new Promise<void>((r) => server.listen(join(dir, 'host-agent.sock'), r));
  agent = new HostAgentClient({ socketPath: join(dir, 'host-agent.sock') });
});
after(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

test('the socket is WARREN_HOST_AGENT_SOCKET, else host-agent.sock in WARREN_DATA_DIR', () => {
  assert.equal(
    hostAgentSocket({ WARREN_HOST_AGENT_SOCKET: '/run/x.sock', WARREN_DATA_DIR: '/d' }),
    '/run/x.sock',
  );
  assert.equal(hostAgentSocket({ WARREN_DATA_DIR: '/d' }), '/d/host-agent.sock');
  assert.equal(hostAgentSocket({}), '/var/lib/warren/host-agent.sock');
});

test('an image build delivers each progress line, then its result', async () => {
  handler = (req, res, body) => {
    assert.equal(`${req.method} ${req.url}`, 'POST /v1/images/build');
    assert.deepEqual(JSON.parse(body), { profile: 'minimal', force: true });
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    // Lines split across writes, as a slow build sends them.
    res.write('{"progress":{"step":1,"steps":6,"title":"resolving"}}\n{"progress":{"st');
    res.write('ep":4,"steps":6,"title":"debootstrap","detail":"I: Retrieving"}}\n');
    res.end(
      `{"result":{"imageId":"sha256:${'a'.repeat(64)}","cached":false,"recipeDigest":"${'b'.repeat(64)}","manifest":{"x":1}}}\n`,
    );
  };
  const steps: string[] = [];
  const result = await agent.buildImage(
    { profile: 'minimal', force: true },
    { onProgress: (p) => steps.push(`${p.step}:${p.title}:${p.detail ?? ''}`) },
  );
  assert.deepEqual(steps, ['1:resolving:', '4:debootstrap:I: Retrieving']);
  assert.equal(result.imageId, `sha256:${'a'.repeat(64)}`);
  // Fields the client does not know pass through, so `--json` prints what the agent sent.
  assert.deepEqual((result as Record<string, unknown>).manifest, { x: 1 });
});

test('a build that fails ends its stream with the error, which keeps its code', async () => {
  handler = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.end(
      '{"progress":{"step":1,"steps":6,"title":"resolving"}}\n{"error":{"code":"IMAGE_BUILD_FAILED","message":"no mirror","fix":"x"}}\n',
    );
  };
  await assert.rejects(agent.buildImage({ profile: 'standard' }), {
    code: 'IMAGE_BUILD_FAILED',
    message: 'no mirror',
  });
  handler = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.end('{"progress":{"step":1,"steps":6,"title":"resolving"}}\n');
  };
  await assert.rejects(agent.buildImage({ profile: 'standard' }), { code: 'HOST_AGENT_UNREACHABLE' });
});

test("the agent's own errors keep their codes", async () => {
  handler = (_req, res) =>
    res
      .writeHead(404, { 'content-type': 'application/json' })
      .end('{"error":{"code":"IMAGE_NOT_FOUND","message":"no image x","fix":"y"}}');
  await assert.rejects(agent.createVm({ image: 'sha256:x1234567' }), { code: 'IMAGE_NOT_FOUND' });
});

test('no agent on the socket: HOST_AGENT_UNREACHABLE naming the socket and how to start one', async () => {
  const missing = new HostAgentClient({ socketPath: join(dir, 'nothing.sock') });
  await assert.rejects(missing.listImages(), (e) => {
    assert.ok(e instanceof WarrenError);
    assert.equal(e.code, 'HOST_AGENT_UNREACHABLE');
    assert.ok(e.message.includes(join(dir, 'nothing.sock')), e.message);
    assert.match(e.message, /ENOENT: no host agent listens there \(start it: `warren up`/);
    assert.match(e.fix, /run the command as root/);
    return true;
  });
});
