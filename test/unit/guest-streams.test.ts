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
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GuestClient, registerGuestRoutes, useWarrenErrors, VirtioSerialTransport } from '@warren/host-agent';
import { encodeFrame, FrameType } from '@warren/protocol';
import Fastify, { type FastifyInstance } from 'fastify';
import { REPO_ROOT } from '../helpers/image.ts';
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
  registerGuestRoutes(app, async () => client, { maxStreamsPerVm: STREAMS_PER_VM });
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as AddressInfo).port;
});

after(async () => {
  await app?.close();
  client?.close();
  guestAgent?.kill('SIGKILL');
});

/** A client that sends one request and then reads nothing: the slowest reader there is. */
function stalledRequest(method: string, path: string, body?: unknown): Socket {
  const payload = body === undefined ? '' : JSON.stringify(body);
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write(
    `${method} ${path} HTTP/1.1\r\nhost: agent\r\n` +
      (payload ? `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n` : '') +
      `\r\n${payload}`,
  );
  socket.pause();
  return socket;
}

/** Bytes a process has written (`wchar`) or read (`rchar`) so far, from /proc. */
function ioOf(pid: number, field: 'wchar' | 'rchar'): number {
  const m = new RegExp(`^${field}: (\\d+)$`, 'm').exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
  return Number(m?.[1]);
}

/**
 * Bytes the kernel holds in both directions of the TCP connection of `socket` (its send and
 * receive queues, from /proc/net/tcp): buffered there, not in any process.
 */
function kernelQueued(socket: Socket): number {
  const ports = new Set([socket.localPort, socket.remotePort]);
  let sum = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    const local = Number.parseInt(f[1]!.split(':')[1]!, 16);
    const remote = Number.parseInt(f[2]!.split(':')[1]!, 16);
    if (!ports.has(local) || !ports.has(remote)) continue;
    const [tx, rx] = f[4]!.split(':').map((h) => Number.parseInt(h, 16));
    sum += tx! + rx!;
  }
  return sum;
}

/**
 * Waits until `bytes()` stops growing (the same value over five polls) and returns it; stops
 * early, with the value, once it is far past `BOUND`, since a flood that is not held back never
 * stops growing.
 */
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
    const socket = stalledRequest('POST', '/v1/vms/vm-1/exec', {
      argv: ['sh', '-c', `echo $$ > ${pidFile}; exec cat /dev/zero`],
    });
    let pid = 0;
    try {
      pid = await until('the flood runs', () => {
        const text = existsSync(pidFile) ? readFileSync(pidFile, 'utf8').trim() : '';
        return text ? Number(text) : undefined;
      });
      // The kernel holds NDJSON lines of base64: 4 bytes for every 3 the command wrote.
      const held = await plateau(() => ioOf(pid, 'wchar') - (kernelQueued(socket) * 3) / 4);
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
    const socket = stalledRequest('GET', `/v1/vms/vm-1/files?path=${encodeURIComponent(big)}`);
    try {
      const held = await plateau(() => ioOf(guestAgent.pid!, 'rchar') - before - kernelQueued(socket));
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
    const pids: string[] = [];
    /** An exec that runs until its client goes away; resolves once the agent answered 200. */
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
      if (res.status === 200) pids.push(pidFile);
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
      for (const f of pids) {
        const pid = await until(
          'the sleep started',
          () => existsSync(f) && Number(readFileSync(f, 'utf8')),
          20_000,
        );
        await until(`sleep ${pid} is killed when its client leaves`, () => !alive(pid), 20_000);
      }
    }
  });
});
