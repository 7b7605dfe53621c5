/**
 * The telnet framing between the control plane and a host agent's terminal (agents/telnet.ts):
 * data survives both ways, negotiation from the guest is dropped across chunk boundaries, and a
 * hostile guest's endless subnegotiation holds no memory.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TelnetDecoder, telnetData, telnetWindowSize } from '../../apps/control-plane/src/agents/telnet.ts';

const IAC = 0xff;

test('input: 0xFF is doubled, UTF-8 and control bytes pass as they are', () => {
  assert.deepEqual(telnetData(Buffer.from('héllo ✓\x03')), Buffer.from('héllo ✓\x03'));
  assert.deepEqual(telnetData(Buffer.from([1, IAC, 2])), Buffer.from([1, IAC, IAC, 2]));
});

test('window size: NAWS, with 0xFF in a size doubled', () => {
  assert.deepEqual(telnetWindowSize(100, 30), Buffer.from([IAC, 0xfa, 0x1f, 0, 100, 0, 30, IAC, 0xf0]));
  assert.deepEqual(telnetWindowSize(255, 1), Buffer.from([IAC, 0xfa, 0x1f, 0, IAC, IAC, 0, 1, IAC, 0xf0]));
});

test('output: negotiation and subnegotiation dropped, IAC IAC kept, across every split', () => {
  // What busybox telnetd sends first (DO ECHO, DO NAWS, WILL ECHO, WILL SGA), then data.
  const wire = Buffer.from([
    ...[IAC, 0xfd, 1, IAC, 0xfd, 31, IAC, 0xfb, 1, IAC, 0xfb, 3],
    ...Buffer.from('a✓'),
    ...[IAC, IAC],
    ...[IAC, 0xfa, 24, 1, 2, 3, IAC, 0xf0],
    ...[IAC, 0xf1],
    ...Buffer.from('z'),
  ]);
  const want = Buffer.concat([Buffer.from('a✓'), Buffer.from([IAC]), Buffer.from('z')]);
  for (let cut = 0; cut <= wire.length; cut++) {
    const d = new TelnetDecoder();
    const got = Buffer.concat([d.push(wire.subarray(0, cut)), d.push(wire.subarray(cut))]);
    assert.deepEqual(got, want, `split at ${cut}`);
  }
});

test('a subnegotiation that never ends yields nothing and keeps nothing', () => {
  const d = new TelnetDecoder();
  assert.equal(d.push(Buffer.from([IAC, 0xfa])).length, 0);
  for (let i = 0; i < 100; i++) assert.equal(d.push(Buffer.alloc(64 * 1024, 7)).length, 0);
  assert.deepEqual(d.push(Buffer.from([IAC, 0xf0, 0x41])), Buffer.from('A'));
});
