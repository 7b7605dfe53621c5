import type { FrameType } from '@warren/protocol';

/**
 * The 5-byte header of a guest-channel frame (type, then payload length, big-endian) without its
 * payload: a peer announcing `length` bytes, which may be more than any frame may carry.
 */
export function frameHeader(type: FrameType, length: number): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(length, 1);
  return header;
}
