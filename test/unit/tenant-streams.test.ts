/** The per-tenant stream counter the exec and dashboard routes share (tenants/concurrency.ts). */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { TenantStreams } from '@warren/control-plane';

class Stream extends EventEmitter {
  closed = false;
  close(): void {
    this.closed = true;
    this.emit('close');
  }
}

const a = { id: 'ten_000000000000000a', name: 'a' };
const b = { id: 'ten_000000000000000b', name: 'b' };

test('caps are per tenant and per kind; a closed stream frees its place, once', () => {
  const streams = new TenantStreams({ exec: 2, dashboard: 1 });
  const s1 = new Stream();
  const s2 = new Stream();
  streams.hold(a, 'exec', s1);
  streams.hold(a, 'exec', s2);
  assert.throws(() => streams.hold(a, 'exec', new Stream()), { code: 'TOO_MANY_STREAMS' });
  streams.hold(b, 'exec', new Stream());
  streams.hold(a, 'dashboard', new Stream());
  s1.close();
  s1.emit('close');
  streams.hold(a, 'exec', new Stream());
  // The second 'close' of s1 released nothing more: a is at its cap again.
  assert.throws(() => streams.hold(a, 'exec', new Stream()), /WARREN_TENANT_MAX_EXECS = 2/);
});

test('a stream that closed before it was counted (its client left first) takes no place', () => {
  const streams = new TenantStreams({ exec: 1, dashboard: 1 });
  const gone = new Stream();
  gone.close();
  streams.hold(a, 'exec', gone);
  streams.hold(a, 'exec', new Stream());
  assert.throws(() => streams.hold(a, 'exec', new Stream()), { code: 'TOO_MANY_STREAMS' });
});
