import type { Http2Server } from 'node:http2';
import { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { serveChannel } from './server.ts';

/**
 * The guest's end of the control channel, a virtio-serial port: one byte stream shared by every
 * host connection there will ever be. A read returns 0 while no host is connected, and a write
 * waits until one is.
 */
export interface PortDevice {
  read(buffer: Buffer): Promise<number>;
  write(data: Buffer): Promise<void>;
}

/** Every HTTP/2 client connection starts with this (RFC 9113 §3.4). */
const CLIENT_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const FRAME_HEADER_BYTES = 9;
const READ_BYTES = 256 * 1024;
/** Reads return 0 at once while no host is connected: how often to look again. */
const NO_HOST_POLL_MS = 50;

/**
 * Finds where a new host connection starts in the bytes the hosts send.
 *
 * The end of a host connection is not a reliable marker: the guest sees it only if a read
 * happens while no host is connected, and a host that reconnects quickly (a restarted host
 * agent, or one retrying) can come back before that, so its bytes follow the dead host's
 * bytes in the same stream. The client preface marks the start for sure: at a frame
 * boundary its first three bytes would be a frame length of 0x505249 (5 MiB), over any
 * frame size HTTP/2 allows before SETTINGS (16 KiB) or the agent allows after (1 MiB).
 */
export class ConnectionSplitter {
  /** Bytes left of the current frame (or preface). */
  #skip = 0;
  /** Bytes at a frame boundary too few to tell a frame from a preface yet. */
  #held: Buffer = Buffer.alloc(0);
  #fresh = true;

  /** After the guest saw the host go: what comes next is a new connection. */
  reset(): void {
    this.#skip = 0;
    this.#held = Buffer.alloc(0);
    this.#fresh = true;
  }

  /** Splits `chunk` into pieces; `fresh` starts a new host connection. */
  push(chunk: Buffer): { data: Buffer; fresh: boolean }[] {
    const data = this.#held.length ? Buffer.concat([this.#held, chunk]) : chunk;
    this.#held = Buffer.alloc(0);
    const out: { data: Buffer; fresh: boolean }[] = [];
    let start = 0;
    let end = data.length;
    let i = 0;
    while (i < data.length) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, data.length - i);
        i += n;
        this.#skip -= n;
        continue;
      }
      const left = data.length - i;
      if (left < 3 || (left < FRAME_HEADER_BYTES && !isPrefaceStart(data, i))) {
        end = i;
        this.#held = Buffer.from(data.subarray(i));
        break;
      }
      if (isPrefaceStart(data, i)) {
        if (i > start) out.push({ data: data.subarray(start, i), fresh: this.#fresh });
        start = i;
        this.#fresh = true;
        this.#skip = CLIENT_PREFACE.length;
        continue;
      }
      this.#skip = FRAME_HEADER_BYTES + data.readUIntBE(i, 3);
    }
    if (end > start) {
      out.push({ data: data.subarray(start, end), fresh: this.#fresh });
      this.#fresh = false;
    }
    return out;
  }
}

function isPrefaceStart(data: Buffer, at: number): boolean {
  return data[at] === 0x50 && data[at + 1] === 0x52 && data[at + 2] === 0x49;
}

/**
 * One host connection as the HTTP/2 server sees it. Once it is over, its writes are dropped:
 * the next host, which expects a fresh session, must never get a byte of this one.
 */
class HostConnection extends Duplex {
  readonly #device: PortDevice;
  #over = false;
  #wantsMore: (() => void) | undefined;

  constructor(device: PortDevice) {
    super();
    this.#device = device;
  }

  /** Resolves when the session can take more (or is gone). */
  deliver(data: Buffer): Promise<void> | undefined {
    if (this.#over || this.push(data)) return undefined;
    return new Promise((resolve) => {
      this.#wantsMore = resolve;
    });
  }

  hostGone(): void {
    if (this.#over) return;
    this.#over = true;
    this.push(null);
    this.#release();
  }

  #release() {
    const resolve = this.#wantsMore;
    this.#wantsMore = undefined;
    resolve?.();
  }

  override _read(): void {
    this.#release();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.#over) {
      callback();
      return;
    }
    this.#device.write(chunk).then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#over = true;
    this.#release();
    callback(error);
  }
}

/**
 * Serves one HTTP/2 session per host connection over the port, for as long as reads work.
 * The port stays open throughout: closing it would make the kernel discard what it holds,
 * which can be the start of the next host's connection.
 */
export async function servePort(server: Http2Server, device: PortDevice): Promise<void> {
  const splitter = new ConnectionSplitter();
  let current: HostConnection | undefined;
  const buffer = Buffer.allocUnsafe(READ_BYTES);
  try {
    for (;;) {
      const n = await device.read(buffer);
      if (n === 0) {
        current?.hostGone();
        current = undefined;
        splitter.reset();
        await sleep(NO_HOST_POLL_MS);
        continue;
      }
      // Copied: the buffer is reused by the next read while the session may still hold this.
      for (const piece of splitter.push(Buffer.from(buffer.subarray(0, n)))) {
        if (piece.fresh || !current) {
          current?.hostGone();
          current = new HostConnection(device);
          void serveChannel(server, current);
        }
        await current.deliver(piece.data);
      }
    }
  } finally {
    current?.hostGone();
  }
}
