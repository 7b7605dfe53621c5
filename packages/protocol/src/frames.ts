/**
 * Framing for exec streams. An exec is one HTTP/2 stream; inside it both directions carry
 * frames of `[type: u8][length: u32 BE][payload]`, so stdout, stderr and the exit status
 * share one ordered stream without base64 or JSON overhead on the data path.
 */
export const FrameType = {
  /** host -> guest: the ExecRequest as JSON; always the first frame. */
  Spec: 0x01,
  /** host -> guest: bytes for the command's stdin; the end of the request body closes stdin. */
  Stdin: 0x02,
  /** guest -> host */
  Stdout: 0x11,
  Stderr: 0x12,
  /** guest -> host: ExecExit as JSON; the last frame of a successful exec. */
  Exit: 0x13,
  /** guest -> host: ErrorBody as JSON; the last frame of a failed exec. */
  Error: 0x14,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const FRAME_HEADER_BYTES = 5;
/** Largest payload either side accepts; larger frames are a protocol violation. */
export const MAX_FRAME_PAYLOAD = 1024 * 1024;

export function encodeFrame(type: FrameType, payload: Uint8Array | string): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  if (body.length > MAX_FRAME_PAYLOAD)
    throw new RangeError(`frame payload ${body.length} > ${MAX_FRAME_PAYLOAD}`);
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(body.length, 1);
  return Buffer.concat([header, body]);
}

export interface Frame {
  type: number;
  payload: Buffer;
}

export class FrameError extends Error {}

/**
 * Incremental decoder: push chunks as they arrive, get whole frames back. It never holds
 * more than one frame's worth of bytes beyond what the caller has consumed, and it rejects
 * oversized lengths before buffering them, so a hostile peer cannot make it allocate.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;

  push(chunk: Buffer): Frame[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Frame[] = [];
    while (this.#buffered >= FRAME_HEADER_BYTES) {
      const head = this.#peek(FRAME_HEADER_BYTES);
      const length = head.readUInt32BE(1);
      if (length > MAX_FRAME_PAYLOAD)
        throw new FrameError(`frame of ${length} bytes exceeds ${MAX_FRAME_PAYLOAD}`);
      if (this.#buffered < FRAME_HEADER_BYTES + length) break;
      const all = this.#take(FRAME_HEADER_BYTES + length);
      frames.push({ type: all.readUInt8(0), payload: all.subarray(FRAME_HEADER_BYTES) });
    }
    return frames;
  }

  get pendingBytes(): number {
    return this.#buffered;
  }

  #peek(n: number): Buffer {
    if (this.#chunks[0]!.length < n) this.#chunks = [Buffer.concat(this.#chunks)];
    return this.#chunks[0]!.subarray(0, n);
  }

  #take(n: number): Buffer {
    if (this.#chunks[0]!.length < n) this.#chunks = [Buffer.concat(this.#chunks)];
    const first = this.#chunks[0]!;
    const out = first.subarray(0, n);
    if (first.length === n) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    return out;
  }
}
