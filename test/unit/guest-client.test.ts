/**
 * The host's guest client against (a) the real guest agent running on this machine over a
 * unix socket and (b) a hostile "guest" that breaks the protocol: the host must fail
 * those requests cleanly, never buffer without bound, never hang.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http2 from 'node:http2';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { GuestClient, VirtioSerialTransport } from '@warren/host-agent';
import { encodeFrame, FrameType } from '@warren/protocol';
import { frameHeader } from '../helpers/frame-header.ts';
import { REPO_ROOT } from '../helpers/image.ts';

const dir = await mkdtemp(join(tmpdir(), 'wt-gc-'));
after(() => rm(dir, { recursive: true, force: true }));

describe('against the real guest agent (--listen mode)', () => {
  let agent: ChildProcess;
  let client: GuestClient;
  const sock = join(dir, 'agent.sock');
  before(async () => {
    agent = spawn(process.execPath, [join(REPO_ROOT, 'apps/guest-agent/src/main.ts'), '--listen', sock], {
      stdio: 'ignore',
    });
    while (!existsSync(sock)) await sleep(20);
    client = await GuestClient.connect(new VirtioSerialTransport(sock));
  });
  after(() => {
    client?.close();
    agent?.kill('SIGKILL');
  });

  test('exec streams stdout and stderr separately and reports the exit code', async () => {
    let out = '';
    let err = '';
    const exit = await client.exec(
      { argv: ['sh', '-c', 'echo out; echo err >&2; exit 3'] },
      { onStdout: (b) => (out += b), onStderr: (b) => (err += b) },
    );
    assert.deepEqual([out, err, exit.exitCode, exit.timedOut], ['out\n', 'err\n', 3, false]);
  });

  test('aborting an exec kills it in the guest', async () => {
    const abort = new AbortController();
    const pending = client.exec({ argv: ['sleep', '30'] }, { signal: abort.signal });
    setTimeout(() => abort.abort(), 200);
    await assert.rejects(pending, { code: 'CONFLICT' });
  });

  test('the guest validates what it is asked', async () => {
    await assert.rejects(client.exec({ argv: ['true'], env: { 'BAD NAME': 'x' } }), {
      code: 'INVALID_ARGUMENT',
    });
    await assert.rejects(client.exec({ argv: ['a\0b'] }), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(client.remove({ path: '/' }), { code: 'INVALID_ARGUMENT' });
  });
});

/** A fake guest that answers every exec with `respond`. */
async function hostileGuest(
  respond: (stream: http2.ServerHttp2Stream) => void,
): Promise<{ sock: string; server: Server }> {
  const h2 = http2.createServer();
  h2.on('stream', (stream) => {
    stream.on('error', () => {});
    respond(stream);
  });
  const sock = join(dir, `hostile-${Math.random().toString(16).slice(2)}.sock`);
  const server = createServer((s) => h2.emit('connection', s));
  await new Promise<void>((r) => server.listen(sock, r));
  return { sock, server };
}

describe('against a hostile guest', () => {
  const cases: [string, (s: http2.ServerHttp2Stream) => void, string][] = [
    [
      'an oversized frame',
      (s) => {
        s.respond({ ':status': 200 });
        s.write(frameHeader(FrameType.Stdout, 0xffffffff));
      },
      'GUEST_PROTOCOL',
    ],
    [
      'a forged exit status',
      (s) => {
        s.respond({ ':status': 200 });
        s.end(encodeFrame(FrameType.Exit, JSON.stringify({ exitCode: 'zero', path: '/etc/shadow' })));
      },
      'GUEST_PROTOCOL',
    ],
    [
      'an unknown frame type',
      (s) => {
        s.respond({ ':status': 200 });
        s.end(encodeFrame(0x7f as never, 'x'));
      },
      'GUEST_PROTOCOL',
    ],
    [
      'an error body with an invented code',
      (s) => {
        s.respond({ ':status': 500 });
        s.end(JSON.stringify({ error: { code: 'ROOT_ME', message: 'x' } }));
      },
      'GUEST_PROTOCOL',
    ],
    [
      'a stream that ends without an exit',
      (s) => s.respond({ ':status': 200 }, { endStream: true }),
      'GUEST_UNAVAILABLE',
    ],
  ];
  for (const [name, respond, code] of cases) {
    test(`${name} fails the request with ${code}`, async () => {
      const { sock, server } = await hostileGuest(respond);
      const client = await GuestClient.connect(new VirtioSerialTransport(sock));
      try {
        await assert.rejects(client.exec({ argv: ['true'] }), { code });
      } finally {
        client.close();
        server.close();
      }
    });
  }

  test('a guest that never answers hits the host deadline', async () => {
    const { sock, server } = await hostileGuest(() => {});
    const client = await GuestClient.connect(new VirtioSerialTransport(sock));
    try {
      const exit = await client.exec({ argv: ['true'], timeoutMs: 1 }, {});
      assert.equal(exit.timedOut, true);
    } finally {
      client.close();
      server.close();
    }
  });

  test('an oversized JSON answer is cut off', async () => {
    const { sock, server } = await hostileGuest((s) => {
      s.respond({ ':status': 200 });
      const chunk = Buffer.alloc(1024 * 1024, 0x20);
      for (let i = 0; i < 6; i++) s.write(chunk);
      s.end();
    });
    const client = await GuestClient.connect(new VirtioSerialTransport(sock));
    try {
      await assert.rejects(client.health(), { code: 'GUEST_PROTOCOL' });
    } finally {
      client.close();
      server.close();
    }
  });
});
