/**
 * The host agent's guest routes (exec, files) as a hostile tenant or client uses them: the real
 * routes (`registerGuestRoutes`, what both APIs serve) over real HTTP, the real guest client,
 * and the real guest agent in `--listen` mode standing in for the VM (no VM to boot: the
 * guest agent runs its commands on this machine, as it would in the guest).
 *
 * What is measured is real: how many bytes the tenant's command managed to write
 * (`/proc/<pid>/io`) while nobody reads the answer. Every byte written and not delivered sits
 * in some buffer between the command and the client; a bound on it is a bound on what the
 * agent holds.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GuestClient, registerGuestRoutes, useWarrenErrors, VirtioSerialTransport } from '@warren/host-agent';
import { encodeFrame, FrameType } from '@warren/protocol';
import Fastify, { type FastifyInstance } from 'fastify';
import { frameHeader } from '../helpers/frame-header.ts';
import { REPO_ROOT } from '../helpers/image.ts';
import { kernelQueuedOn, plateau, stalledRequest } from '../helpers/stalled-reader.ts';
import { until } from '../helpers/until.ts';

const MiB = 1024 * 1024;
const STREAMS_PER_VM = 4;
/**
 * What the agent and the guest may hold for a stalled reader: one HTTP/2 stream window toward
 * the guest (8 MiB), the pipe and the guest agent's own buffers, the reply's buffer. The
 * kernel's socket buffers between agent and client (tens of MiB with loopback autotuning) are
 * measured and taken off. A flood that is not held back passes the bound in well under a second.
 */
const BOUND = 16 * MiB;

const dir = await mkdtemp(join(tmpdir(), 'wt-gs-'));
after(() => rm(dir, { recursive: true, force: true }));

let guestAgent: ChildProcess;
let client: GuestClient;
/** VM ids served by a hostile guest instead of the real guest agent. */
const hostile = new Map<string, GuestClient>();
/** Whatever escaped to the process: on a real agent, each of these would have ended it. */
const escaped: unknown[] = [];
const onEscape = (e: unknown) => escaped.push(e);
process.on('uncaughtExceptionMonitor', onEscape);
process.on('unhandledRejection', onEscape);
let app: FastifyInstance;
let port = 0;

before(async () => {
  const sock = join(dir, 'agent.sock');
  guestAgent = spawn(process.execPath, [join(REPO_ROOT, 'apps/guest-agent/src/main.ts'), '--listen', sock], {
    stdio: 'ignore',
  });
  await until('the guest agent listens', () => existsSync(sock), 20_000, 20);
  client = await GuestClient.connect(new VirtioSerialTransport(sock));
  app = Fastify({ logger: false });
  useWarrenErrors(app);
  registerGuestRoutes(app, async (id) => hostile.get(id) ?? client, { maxStreamsPerVm: STREAMS_PER_VM });
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as AddressInfo).port;
});

after(async () => {
  process.off('uncaughtExceptionMonitor', onEscape);
  process.off('unhandledRejection', onEscape);
  await app?.close();
  for (const c of hostile.values()) c.close();
  client?.close();
  guestAgent?.kill('SIGKILL');
});

/** Bytes a process has written (`wchar`) or read (`rchar`) so far, from /proc. */
function ioOf(pid: number, field: 'wchar' | 'rchar'): number {
  const m = new RegExp(`^${field}: (\\d+)$`, 'm').exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
  return Number(m?.[1]);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('a stalled reader (finding 3: backpressure)', () => {
  test('cannot make the agent buffer a command that floods its output', async () => {
    const pidFile = join(dir, 'flood.pid');
    const socket = stalledRequest(port, 'POST', '/v1/vms/vm-1/exec', {
      body: { argv: ['sh', '-c', `echo $$ > ${pidFile}; exec cat /dev/zero`] },
    });
    let pid = 0;
    try {
      pid = await until('the flood runs', () => {
        const text = existsSync(pidFile) ? readFileSync(pidFile, 'utf8').trim() : '';
        return text ? Number(text) : undefined;
      });
      // The kernel holds NDJSON lines of base64: 4 bytes for every 3 the command wrote.
      const held = await plateau(() => ioOf(pid, 'wchar') - (kernelQueuedOn(socket) * 3) / 4, BOUND);
      assert.ok(
        held < BOUND,
        `the command wrote ${held} bytes beyond the kernel's that nobody read (bound ${BOUND})`,
      );
      // Reading again lets the command go on: the pause was backpressure, not a cut.
      socket.resume();
      const stalled = ioOf(pid, 'wchar');
      await until('the flood flows again', () => ioOf(pid, 'wchar') > stalled + 64 * MiB, 60_000, 50);
    } finally {
      socket.destroy();
      // Also before the next test: a flood still running would count in its measurement.
      if (pid) await until('the command is killed when the client leaves', () => !alive(pid), 20_000);
    }
  });

  test('cannot make the agent buffer a large file download', async () => {
    const big = join(dir, 'big.bin');
    const handle = await open(big, 'w');
    await handle.truncate(4 * 1024 * MiB); // sparse: no disk used
    await handle.close();
    const before = ioOf(guestAgent.pid!, 'rchar');
    const socket = stalledRequest(port, 'GET', `/v1/vms/vm-1/files?path=${encodeURIComponent(big)}`);
    try {
      const held = await plateau(
        () => ioOf(guestAgent.pid!, 'rchar') - before - kernelQueuedOn(socket),
        BOUND,
      );
      assert.ok(held < BOUND, `the guest read ${held} bytes of the file that nobody took (bound ${BOUND})`);
    } finally {
      socket.destroy();
      await rm(big, { force: true });
    }
  });
});

describe('many streams to one VM (finding 8: a cap per VM)', () => {
  test(`the ${STREAMS_PER_VM + 1}th concurrent exec or file stream to one VM is refused`, async () => {
    const aborts: AbortController[] = [];
    const pids: number[] = [];
    /** An exec that runs until its client goes away; resolves once its command runs (or it was refused). */
    const longExec = async (vm: string) => {
      const abort = new AbortController();
      aborts.push(abort);
      const pidFile = join(dir, `sleep-${aborts.length}.pid`);
      const res = await fetch(`http://127.0.0.1:${port}/v1/vms/${vm}/exec`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ argv: ['sh', '-c', `echo $$ > ${pidFile}; exec sleep 600`] }),
        signal: abort.signal,
      });
      if (res.status === 200) {
        const started = () => existsSync(pidFile) && Number(readFileSync(pidFile, 'utf8'));
        pids.push(await until('the command runs', started, 20_000));
      }
      return { res, abort };
    };
    try {
      const held = [];
      for (let i = 0; i < STREAMS_PER_VM; i++) held.push(await longExec('vm-1'));
      for (const { res } of held) assert.equal(res.status, 200);

      const extra = await fetch(`http://127.0.0.1:${port}/v1/vms/vm-1/exec`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ argv: ['true'] }),
      });
      assert.equal(extra.status, 429);
      assert.equal(((await extra.json()) as { error: { code: string } }).error.code, 'TOO_MANY_STREAMS');
      const file = await fetch(`http://127.0.0.1:${port}/v1/vms/vm-1/files?path=/etc/hostname`);
      assert.equal(file.status, 429, 'file streams count too');
      await file.body?.cancel();

      // The cap is per VM: another VM is not affected.
      const other = await longExec('vm-2');
      assert.equal(other.res.status, 200);
      other.abort.abort();

      // A stream that ends gives its slot back.
      held[0]!.abort.abort();
      const again = await until('a slot is free again', async () => {
        const r = await longExec('vm-1');
        if (r.res.status === 200) return r;
        r.abort.abort();
        return undefined;
      });
      assert.equal(again.res.status, 200);
    } finally {
      for (const a of aborts) a.abort();
      for (const pid of pids) {
        await until(`sleep ${pid} is killed when its client leaves`, () => !alive(pid), 20_000);
      }
    }
  });
});

/**
 * A fake guest: an HTTP/2 server on a unix socket that answers every stream with `respond`,
 * which also gets the raw channel (to cut it or write garbage into it).
 */
async function hostileGuest(
  respond: (stream: http2.ServerHttp2Stream, channel: Socket) => void,
): Promise<{ sock: string; server: Server }> {
  const h2 = http2.createServer();
  let channel: Socket | undefined;
  h2.on('stream', (stream) => {
    stream.on('error', () => {});
    respond(stream, channel!);
  });
  h2.on('sessionError', () => {});
  const sock = join(dir, `hostile-${hostile.size}-${Date.now()}.sock`);
  const server = createServer((s) => {
    s.on('error', () => {});
    channel = s;
    h2.emit('connection', s);
  });
  await new Promise<void>((r) => server.listen(sock, r));
  return { sock, server };
}

interface ExecLine {
  stdout?: string;
  stderr?: string;
  exit?: { exitCode: number | null };
  error?: { code: string };
}

/** The NDJSON lines of an exec answer, read to the end (or to the connection's end). */
async function execLines(vm: string, argv = ['true']): Promise<{ status: number; lines: ExecLine[] }> {
  const res = await fetch(`http://127.0.0.1:${port}/v1/vms/${vm}/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ argv }),
    signal: AbortSignal.timeout(20_000),
  });
  const text = await res.text().catch(() => '');
  return {
    status: res.status,
    lines: text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as ExecLine),
  };
}

const frame = (type: number, payload: string | Buffer) => encodeFrame(type as never, payload);
/** Set by a hostile guest that has more to send once the host's answer is complete. */
const late = new Map<'send', () => Promise<void>>();
const EXIT = JSON.stringify({ exitCode: 0, signal: null, timedOut: false, durationMs: 1 });

describe('a hostile guest or client cannot end the agent (finding 10, host agent part)', () => {
  const guests: [string, Parameters<typeof hostileGuest>[0], (lines: ExecLine[]) => void][] = [
    [
      'output after the exit frame',
      (s) => {
        s.respond({ ':status': 200 });
        s.write(Buffer.concat([frame(FrameType.Exit, EXIT), frame(FrameType.Stdout, 'late')]));
        // After the host answered its client: late output must not reach a finished reply.
        late.set('send', () => new Promise<void>((r) => s.end(frame(FrameType.Stdout, 'later'), r)));
      },
      (lines) => assert.deepEqual(lines.at(-1)?.exit?.exitCode, 0),
    ],
    [
      'output after an error frame',
      (s) => {
        s.respond({ ':status': 200 });
        const err = JSON.stringify({ error: { code: 'EXEC_FAILED', message: 'no', fix: '' } });
        s.write(Buffer.concat([frame(FrameType.Error, err), frame(FrameType.Stderr, 'late')]));
        // After the host answered its client: late output must not reach a finished reply.
        late.set('send', () => new Promise<void>((r) => s.end(frame(FrameType.Stdout, 'later'), r)));
      },
      (lines) => assert.equal(lines.at(-1)?.error?.code, 'EXEC_FAILED'),
    ],
    [
      'a stream reset in the middle of the output',
      (s) => {
        s.respond({ ':status': 200 });
        s.write(frame(FrameType.Stdout, 'half'), () => s.close(http2.constants.NGHTTP2_INTERNAL_ERROR));
      },
      (lines) => assert.equal(lines.at(-1)?.error?.code, 'GUEST_UNAVAILABLE'),
    ],
    [
      'the whole channel cut in the middle of the output',
      (s, channel) => {
        s.respond({ ':status': 200 });
        s.write(frame(FrameType.Stdout, 'half'), () => channel.destroy());
      },
      (lines) => assert.equal(lines.at(-1)?.error?.code, 'GUEST_UNAVAILABLE'),
    ],
    [
      'garbage bytes on the channel after the handshake',
      (s, channel) => {
        s.respond({ ':status': 200 });
        channel.write(Buffer.alloc(4096, 0xff));
      },
      (lines) => assert.ok(lines.at(-1)?.error, JSON.stringify(lines)),
    ],
    [
      'an oversized frame',
      (s) => {
        s.respond({ ':status': 200 });
        s.write(frameHeader(FrameType.Stdout, 0xffffffff));
      },
      (lines) => assert.equal(lines.at(-1)?.error?.code, 'GUEST_PROTOCOL'),
    ],
  ];
  for (const [name, respond, check] of guests) {
    test(`exec through a guest that sends ${name}`, async () => {
      const { sock, server } = await hostileGuest(respond);
      const vm = `hostile-${hostile.size}`;
      hostile.set(vm, await GuestClient.connect(new VirtioSerialTransport(sock)));
      try {
        late.clear();
        const { status, lines } = await execLines(vm);
        assert.equal(status, 200);
        check(lines);
        await late.get('send')?.();
        // A round trip through the agent after the late bytes are on the channel: the agent has
        // read them by the time it answers (and it answers, so it is still up).
        assert.equal((await execLines('vm-1', ['true'])).status, 200);
        assert.deepEqual(escaped, []);
      } finally {
        hostile.get(vm)?.close();
        server.close();
      }
    });
  }

  test('a guest that speaks no HTTP/2 at all fails the connection, nothing else', async () => {
    const sock = join(dir, 'garbage.sock');
    const server = createServer((s) => {
      s.on('error', () => {});
      s.end(Buffer.alloc(64 * 1024, 0x41));
    });
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      await assert.rejects(GuestClient.connect(new VirtioSerialTransport(sock), 5_000), {
        code: 'GUEST_UNAVAILABLE',
      });
      assert.deepEqual(escaped, []);
    } finally {
      server.close();
    }
  });

  test('file streams cut by the guest end the download, not the agent', async () => {
    const { sock, server } = await hostileGuest((s, channel) => {
      s.respond({ ':status': 200, 'content-length': '1000000' });
      s.write(Buffer.alloc(1000), () => channel.destroy());
    });
    const vm = `hostile-${hostile.size}`;
    hostile.set(vm, await GuestClient.connect(new VirtioSerialTransport(sock)));
    try {
      const res = await fetch(`http://127.0.0.1:${port}/v1/vms/${vm}/files?path=/x`);
      // Cut before or after the agent's headers: an error answer, or a cut body; never a whole file.
      const body = await res.arrayBuffer().then(
        (b) => b.byteLength,
        () => 'cut',
      );
      assert.ok(res.status !== 200 || body === 'cut', `a cut download arrived as whole (${body} bytes)`);
      const up = await fetch(`http://127.0.0.1:${port}/v1/vms/${vm}/files?path=/x`, {
        method: 'PUT',
        headers: { 'content-type': 'application/octet-stream' },
        body: Buffer.alloc(1024 * 1024),
      });
      assert.equal(up.status, 503);
      assert.deepEqual(escaped, []);
    } finally {
      hostile.get(vm)?.close();
      server.close();
    }
  });

  test('clients that go away mid-stream end their streams in the guest, and not the agent', async () => {
    const big = join(dir, 'abort.bin');
    const handle = await open(big, 'w');
    await handle.truncate(256 * MiB);
    await handle.close();
    const uploads = join(dir, 'uploads');
    await mkdir(uploads);
    const pidFile = join(dir, 'abort-flood.pid');
    const guestHasOpen = (path: string) =>
      readdirSync(`/proc/${guestAgent.pid}/fd`).some((fd) => {
        try {
          return readlinkSync(`/proc/${guestAgent.pid}/fd/${fd}`) === path;
        } catch {
          return false;
        }
      });

    // An exec flood, a download and an upload, each cut once it runs in the guest.
    const exec = stalledRequest(port, 'POST', '/v1/vms/vm-1/exec', {
      body: { argv: ['sh', '-c', `echo $$ > ${pidFile}; exec cat /dev/zero`] },
    });
    const pid = await until(
      'the flood runs',
      () => existsSync(pidFile) && Number(readFileSync(pidFile, 'utf8')),
    );
    exec.destroy();
    await until('the command is killed', () => !alive(pid), 20_000);

    const download = stalledRequest(port, 'GET', `/v1/vms/vm-1/files?path=${encodeURIComponent(big)}`);
    await until('the guest reads the file', () => guestHasOpen(big), 20_000);
    download.destroy();
    await until('the guest closes the file', () => !guestHasOpen(big), 20_000);

    const upload = connect(port, '127.0.0.1');
    upload.on('error', () => {});
    upload.write(
      `PUT /v1/vms/vm-1/files?path=${encodeURIComponent(join(uploads, 'f.bin'))} HTTP/1.1\r\nhost: agent\r\n` +
        `content-type: application/octet-stream\r\ncontent-length: ${64 * MiB}\r\n\r\n`,
    );
    upload.write(Buffer.alloc(MiB));
    await until('the guest writes the upload', () => readdirSync(uploads).length > 0, 20_000);
    upload.destroy();
    await until('the guest drops the partial upload', () => readdirSync(uploads).length === 0, 20_000);

    const after = await execLines('vm-1', ['echo', 'still here']);
    assert.equal(Buffer.from(after.lines[0]?.stdout ?? '', 'base64').toString(), 'still here\n');
    assert.deepEqual(escaped, []);
    await rm(big, { force: true });
  });
});
