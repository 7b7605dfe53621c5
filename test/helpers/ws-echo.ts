/**
 * A minimal RFC 6455 WebSocket server side (unfragmented frames, no extensions), enough to
 * stand in for a dashboard's WebSocket in tests and benchmarks without another dependency.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

export function wsAccept(key: string): string {
  return createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
}

export function frame(opcode: number, payload: Buffer): Buffer {
  const n = payload.length;
  const head = n < 126 ? Buffer.alloc(2) : n < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
  head[0] = 0x80 | opcode;
  if (n < 126) head[1] = n;
  else if (n < 65536) {
    head[1] = 126;
    head.writeUInt16BE(n, 2);
  } else {
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([head, payload]);
}

/** One complete (unfragmented) client frame from the front of `buf`, unmasked. */
export function parseFrame(buf: Buffer): { opcode: number; payload: Buffer; size: number } | undefined {
  if (buf.length < 2) return undefined;
  const opcode = buf[0]! & 0x0f;
  const masked = (buf[1]! & 0x80) !== 0;
  let len = buf[1]! & 0x7f;
  let off = 2;
  if (len === 126) {
    if (buf.length < 4) return undefined;
    len = buf.readUInt16BE(2);
    off = 4;
  } else if (len === 127) {
    if (buf.length < 10) return undefined;
    len = Number(buf.readBigUInt64BE(2));
    off = 10;
  }
  const maskAt = off;
  if (masked) off += 4;
  if (buf.length < off + len) return undefined;
  const payload = Buffer.from(buf.subarray(off, off + len));
  if (masked) for (let i = 0; i < payload.length; i++) payload[i]! ^= buf[maskAt + (i % 4)]!;
  return { opcode, payload, size: off + len };
}

/**
 * Accepts the WebSocket upgrade `req` on `socket` (101 Switching Protocols with its
 * Sec-WebSocket-Accept, plus `extraHeaders` as `name: value` lines) and echoes what follows
 * `head` (`serveWebSocketEcho`).
 */
export function acceptWebSocketEcho(
  req: IncomingMessage,
  socket: Socket,
  head: Buffer,
  extraHeaders: string[] = [],
): void {
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      extraHeaders.map((h) => `${h}\r\n`).join('') +
      `Sec-WebSocket-Accept: ${wsAccept(String(req.headers['sec-websocket-key']))}\r\n\r\n`,
  );
  serveWebSocketEcho(socket, head);
}

/** A minimal RFC 6455 echo: text and binary frames back as they came, ping → pong, close → close. */
export function serveWebSocketEcho(socket: Socket, head: Buffer): void {
  let buf = head;
  socket.setNoDelay(true);
  socket.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (let f = parseFrame(buf); f; f = parseFrame(buf)) {
      buf = buf.subarray(f.size);
      if (f.opcode === 0x8) {
        socket.end(frame(0x8, f.payload));
        return;
      }
      if (f.opcode === 0x9) socket.write(frame(0xa, f.payload));
      else if (f.opcode === 0x1 || f.opcode === 0x2) socket.write(frame(f.opcode, f.payload));
    }
  });
  socket.on('error', () => socket.destroy());
}
