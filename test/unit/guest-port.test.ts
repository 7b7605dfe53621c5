/**
 * The guest agent's port loop (the real agent server and the real host client) over a fake
 * virtio-serial port: the port is the kernel driver and QEMU, outside the unit. It behaves like
 * the real one: one byte stream for every host connection; a read returns 0 only if it runs
 * while no host is connected, so a host that reconnects before the guest's next read leaves no
 * trace of the one before; a write waits for a host and goes to whichever host is there.
 */
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { describe, test } from 'node:test';
import { GuestClient, type GuestTransport } from '@warren/host-agent';
import { ConnectionSplitter, type PortDevice, servePort } from '../../apps/guest-agent/src/port.ts';
import { createAgentServer } from '../../apps/guest-agent/src/server.ts';
import { until } from '../helpers/until.ts';

class FakePort implements PortDevice {
  #queue: Buffer[] = [];
  #host: Duplex | undefined;
  #wake: (() => void)[] = [];
  #writers: (() => void)[] = [];
  #broken = false;
  /** The guest's pending read has not yet run since the host left (it is not woken). */
  #unseen = false;

  /** What the host agent's transport does: a new connection to QEMU's socket. */
  transport(): GuestTransport {
    return {
      kind: 'virtio-serial',
      connect: async () => {
        const host = new Duplex({
          read() {},
          write: (chunk: Buffer, _e, callback) => {
            if (this.#host === host) this.#queue.push(chunk);
            this.#notify();
            callback();
          },
          destroy: (err, callback) => {
            if (this.#host === host) this.#host = undefined;
            this.#notify();
            callback(err);
          },
        });
        this.#host?.destroy();
        this.#host = host;
        this.#unseen = false;
        this.#notify();
        return host;
      },
    };
  }

  /** The host vanishes (kill -9) and another connects before the guest runs again. */
  replaceHost(): void {
    this.#host?.destroy();
    this.#host = undefined;
    // No wake-up in between: the guest's pending read sees a host connected again.
  }

  break(): void {
    this.#broken = true;
    this.#notify();
  }

  #notify() {
    const wake = [...this.#writers, ...(this.#unseen && !this.#broken ? [] : this.#wake)];
    this.#writers = [];
    if (!this.#unseen || this.#broken) this.#wake = [];
    for (const w of wake) w();
  }

  async read(buffer: Buffer): Promise<number> {
    for (;;) {
      if (this.#broken) throw new Error('port removed');
      const chunk = this.#queue.shift();
      if (chunk) {
        const n = chunk.copy(buffer);
        if (n < chunk.length) this.#queue.unshift(chunk.subarray(n));
        return n;
      }
      if (!this.#host) return 0;
      await new Promise<void>((resolve) => this.#wake.push(resolve));
    }
  }

  /** Guest writes waiting for a host to connect. */
  waitingWrites = 0;

  /**
   * The host vanishes, and none is connected until the next `transport().connect()`; the
   * guest's pending read does not run before that (the guest is slow), the session goes on.
   */
  dropHostUnseen(): void {
    this.#unseen = true;
    this.#host?.destroy();
  }

  async write(data: Buffer): Promise<void> {
    while (!this.#host) {
      if (this.#broken) throw new Error('port removed');
      this.waitingWrites++;
      await new Promise<void>((resolve) => this.#writers.push(resolve));
      this.waitingWrites--;
    }
    this.#host.push(Buffer.from(data));
  }
}

/**
 * Serves a new FakePort with the guest agent's server while `body` runs; afterwards closes the
 * clients `body` put in `clients` and stops serving.
 */
async function withServedPort(
  body: (port: FakePort, clients: GuestClient[]) => Promise<void>,
): Promise<void> {
  const port = new FakePort();
  const served = servePort(createAgentServer({ onShutdown() {}, onRestart() {} }), port).catch(() => {});
  const clients: GuestClient[] = [];
  try {
    await body(port, clients);
  } finally {
    for (const c of clients) c.close();
    port.break();
    await served;
  }
}

/** The next host connects and gets a fresh session: it answers, and runs a command to its end. */
async function connectFresh(port: FakePort, clients: GuestClient[]): Promise<void> {
  const next = await GuestClient.connect(port.transport(), 5_000);
  clients.push(next);
  assert.equal(typeof (await next.health()).apiVersion, 'number');
  let out = '';
  const exit = await next.exec({ argv: ['echo', 'fresh'] }, { onStdout: (b) => (out += b) });
  assert.deepEqual([out, exit.exitCode], ['fresh\n', 0]);
}

describe('guest port loop', () => {
  test('a host that connects right after another vanished mid-stream gets a fresh session', () =>
    withServedPort(async (port, clients) => {
      const first = await GuestClient.connect(port.transport());
      clients.push(first);
      const running = first.exec({ argv: ['sleep', '30'] }).catch((e) => e);
      // The exec's stream exists in the guest once a later request was answered.
      await first.health();
      port.replaceHost();
      await connectFresh(port, clients);
      first.close();
      // The vanished host's exec ended with its session (the guest kills the command).
      assert.equal((await running).code, 'GUEST_UNAVAILABLE');
    }));

  test("output the vanished host's session had on its way does not spoil the next session", () =>
    withServedPort(async (port, clients) => {
      const first = await GuestClient.connect(port.transport());
      clients.push(first);
      let seen = 0;
      const running = first
        .exec(
          { argv: ['sh', '-c', 'while :; do echo output; done'] },
          { onStdout: (b) => (seen += b.length) },
        )
        .catch((e) => e);
      await until('the command writes output', () => seen > 0, 10_000, 10);
      port.dropHostUnseen();
      // The guest's writes of that output now wait for a host, and go to the next one.
      await until('a guest write waits for a host', () => port.waitingWrites > 0, 10_000, 10);
      await connectFresh(port, clients);
      first.close();
      assert.equal((await running).code, 'GUEST_UNAVAILABLE');
    }));

  test('a host that reconnects while the guest is idle is served again, many times over', () =>
    withServedPort(async (port) => {
      for (let i = 0; i < 5; i++) {
        const client = await GuestClient.connect(port.transport(), 5_000);
        assert.equal(typeof (await client.health()).apiVersion, 'number');
        port.replaceHost();
      }
    }));
});

describe('connection splitter', () => {
  const preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
  const frame = (payload: Buffer) => {
    const header = Buffer.alloc(9);
    header.writeUIntBE(payload.length, 0, 3);
    return Buffer.concat([header, payload]);
  };

  test('finds a preface after whole frames, however the bytes are cut into reads', () => {
    // A frame whose payload contains a preface: it must not count as a new connection.
    const stream = Buffer.concat([
      preface,
      frame(Buffer.concat([preface, Buffer.from('x')])),
      preface,
      frame(Buffer.alloc(3)),
    ]);
    for (let cut = 1; cut <= stream.length; cut++) {
      const splitter = new ConnectionSplitter();
      const pieces: { data: Buffer; fresh: boolean }[] = [];
      for (let at = 0; at < stream.length; at += cut)
        pieces.push(...splitter.push(stream.subarray(at, at + cut)));
      const connections: Buffer[] = [];
      for (const p of pieces) {
        if (p.fresh) connections.push(p.data);
        else connections[connections.length - 1] = Buffer.concat([connections.at(-1)!, p.data]);
      }
      const firstLength = preface.length + 9 + preface.length + 1;
      assert.deepEqual(
        connections,
        [stream.subarray(0, firstLength), stream.subarray(firstLength)],
        `reads of ${cut}`,
      );
    }
  });
});
