import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeFrame, FrameDecoder, FrameError, FrameType, MAX_FRAME_PAYLOAD } from '@warren/protocol';
import { frameHeader } from '../helpers/frame-header.ts';

test('frames survive arbitrary chunking in order', () => {
  const payloads = [Buffer.from('a'), Buffer.alloc(70_000, 7), Buffer.alloc(0), Buffer.from('end')];
  const wire = Buffer.concat(payloads.map((p) => encodeFrame(FrameType.Stdout, p)));
  for (const step of [1, 3, 4096, wire.length]) {
    const d = new FrameDecoder();
    const got: Buffer[] = [];
    for (let i = 0; i < wire.length; i += step)
      got.push(...d.push(wire.subarray(i, i + step)).map((f) => f.payload));
    assert.deepEqual(got, payloads);
    assert.equal(d.pendingBytes, 0);
  }
});

test('an oversized length is refused before its bytes are buffered', () => {
  assert.throws(
    () => new FrameDecoder().push(frameHeader(FrameType.Stdout, MAX_FRAME_PAYLOAD + 1)),
    FrameError,
  );
  assert.throws(() => encodeFrame(FrameType.Stdout, Buffer.alloc(MAX_FRAME_PAYLOAD + 1)), RangeError);
});
