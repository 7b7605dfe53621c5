/**
 * Measuring what a server holds for a client that reads nothing: the stalled request itself,
 * the bytes the kernel's socket queues hold (buffered there, not in any process), and waiting
 * for a flood to be held back.
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { until } from './until.ts';

/**
 * Sends one HTTP/1.1 request to 127.0.0.1:`port` and then reads nothing: the slowest reader
 * there is. `headers` are extra header lines (`name: value`), e.g. an authorization.
 */
export function stalledRequest(
  port: number,
  method: string,
  path: string,
  opts: { body?: unknown; headers?: string[] } = {},
): Socket {
  const payload = opts.body === undefined ? '' : JSON.stringify(opts.body);
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write(
    `${method} ${path} HTTP/1.1\r\nhost: test\r\n` +
      (opts.headers ?? []).map((h) => `${h}\r\n`).join('') +
      (payload ? `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n` : '') +
      `\r\n${payload}`,
  );
  socket.pause();
  return socket;
}

/** Sum of send and receive queues of the /proc/net/tcp entries `include` picks by port. */
function queued(include: (local: number, remote: number) => boolean): number {
  let sum = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    const local = Number.parseInt(f[1]!.split(':')[1]!, 16);
    const remote = Number.parseInt(f[2]!.split(':')[1]!, 16);
    if (!include(local, remote)) continue;
    const [tx, rx] = f[4]!.split(':').map((h) => Number.parseInt(h, 16));
    sum += tx! + rx!;
  }
  return sum;
}

/**
 * Bytes the kernel holds in both directions of the TCP connection of `socket` (both of its
 * ends' send and receive queues).
 */
export function kernelQueuedOn(socket: Socket): number {
  const ports = new Set([socket.localPort, socket.remotePort]);
  return queued((local, remote) => ports.has(local) && ports.has(remote));
}

/**
 * Bytes the kernel holds for every TCP connection with one end on one of `ports`: for a
 * server's port, all of its connections, whose client ports the test does not know.
 */
export function kernelQueuedOnPorts(ports: number[]): number {
  const on = new Set(ports);
  return queued((local, remote) => on.has(local) || on.has(remote));
}

/**
 * Waits until `bytes()` stops growing (the same value over five polls) and returns it; stops
 * early, with the value, once it is past four times `bound`, since a flood that is not held
 * back never stops growing.
 */
export async function plateau(bytes: () => number, bound: number): Promise<number> {
  let last = -1;
  let same = 0;
  return until(
    'the flood is held back or passes the bound',
    () => {
      const v = bytes();
      if (v > 4 * bound) return v;
      same = v === last ? same + 1 : 0;
      last = v;
      return same >= 5 ? v : false;
    },
    60_000,
    200,
  );
}
