/**
 * The VMs' DNS forwarder, on loopback: it relays UDP and TCP queries to the upstream resolver
 * and answers only clients of the VM network, so it is never an open resolver.
 */
import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { DnsForwarder, parseCidr, systemResolver } from '@warren/host-agent';

/** A query for `name` (type A) with this id. */
function query(id: number, name: string): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2);
  header.writeUInt16BE(1, 4);
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
}

/** The upstream: echoes each query back as its answer, with QR set and a marker byte appended. */
const upstreamSeen: string[] = [];
let upstreamUdp: Socket;
let upstreamTcp: Server;
let port = 0;
let forwarder: DnsForwarder;
let closed: DnsForwarder;
const dir = await mkdtemp(join(tmpdir(), 'wt-dns-'));

function answer(q: Buffer): Buffer {
  const a = Buffer.concat([q, Buffer.from([0x2a])]);
  a.writeUInt16BE(0x8180, 2);
  return a;
}

before(async () => {
  upstreamUdp = createSocket('udp4');
  upstreamUdp.on('message', (m, r) => {
    upstreamSeen.push(`udp:${m.readUInt16BE(0)}`);
    upstreamUdp.send(answer(m), r.port, r.address);
  });
  await new Promise<void>((r) => upstreamUdp.bind(0, '127.0.0.1', r));
  const upstreamPort = upstreamUdp.address().port;
  upstreamTcp = createServer((c) => {
    c.on('data', (d) => {
      const q = d.subarray(2, 2 + d.readUInt16BE(0));
      upstreamSeen.push(`tcp:${q.readUInt16BE(0)}`);
      const a = answer(q);
      const len = Buffer.alloc(2);
      len.writeUInt16BE(a.length);
      c.write(Buffer.concat([len, a]));
    });
  });
  await new Promise<void>((r) => upstreamTcp.listen(upstreamPort, '127.0.0.1', r));
  // A free port for both protocols: take one from a throwaway TCP listener.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  port = (probe.address() as AddressInfo).port;
  await new Promise((r) => probe.close(r));
  forwarder = new DnsForwarder({
    port,
    host: '127.0.0.1',
    upstream: { host: '127.0.0.1', port: upstreamPort },
    clients: parseCidr('127.0.0.0/8'),
    timeoutMs: 1000,
  });
  await forwarder.start();
});

after(async () => {
  forwarder?.close();
  closed?.close();
  upstreamUdp?.close();
  upstreamTcp?.close();
  await rm(dir, { recursive: true, force: true });
});

function udpAsk(to: number, q: Buffer, waitMs = 1500): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const timer = setTimeout(() => {
      s.close();
      resolve(undefined);
    }, waitMs);
    s.on('message', (m) => {
      clearTimeout(timer);
      s.close();
      resolve(m);
    });
    s.send(q, to, '127.0.0.1');
  });
}

test('UDP queries are relayed to the upstream and the answers come back to the asker', async () => {
  const replies = await Promise.all([1, 2, 3].map((id) => udpAsk(port, query(id, 'web.example.test'))));
  for (const [i, r] of replies.entries()) {
    assert.ok(r, `answer ${i + 1}`);
    assert.equal(r.readUInt16BE(0), i + 1);
    assert.equal(r.at(-1), 0x2a);
  }
  assert.deepEqual(upstreamSeen.filter((s) => s.startsWith('udp:')).sort(), ['udp:1', 'udp:2', 'udp:3']);
});

test('TCP queries are relayed too (length-prefixed both ways)', async () => {
  const q = query(77, 'web.example.test');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(q.length);
  const reply = await new Promise<Buffer>((resolve, reject) => {
    const c = connect(port, '127.0.0.1', () => c.write(Buffer.concat([len, q])));
    let buf = Buffer.alloc(0);
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        c.destroy();
        resolve(buf.subarray(2));
      }
    });
    c.on('error', reject);
  });
  assert.equal(reply.readUInt16BE(0), 77);
  assert.ok(upstreamSeen.includes('tcp:77'));
});

test('clients outside the VM network get nothing, and nothing reaches the upstream', async () => {
  const own = createServer();
  await new Promise<void>((r) => own.listen(0, '127.0.0.1', r));
  const ownPort = (own.address() as AddressInfo).port;
  await new Promise((r) => own.close(r));
  closed = new DnsForwarder({
    port: ownPort,
    host: '127.0.0.1',
    upstream: { host: '127.0.0.1', port: upstreamUdp.address().port },
    clients: parseCidr('10.213.0.0/16'),
  });
  await closed.start();
  const seen = upstreamSeen.length;
  assert.equal(await udpAsk(ownPort, query(9, 'web.example.test'), 500), undefined);
  const tcpClosed = await new Promise<boolean>((resolve) => {
    const c = connect(ownPort, '127.0.0.1');
    c.on('close', () => resolve(true));
    c.on('error', () => {});
  });
  assert.ok(tcpClosed);
  assert.equal(upstreamSeen.length, seen);
});

test('malformed or oversized datagrams are ignored', async () => {
  assert.equal(await udpAsk(port, Buffer.from('short'), 400), undefined);
  assert.equal(await udpAsk(port, Buffer.alloc(5000), 400), undefined);
});

test('the host resolver is the first nameserver of resolv.conf', async () => {
  const file = join(dir, 'resolv.conf');
  await writeFile(file, '# generated\nsearch example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n');
  assert.equal(await systemResolver(file), '192.0.2.53');
  await writeFile(file, 'search example\n');
  assert.equal(await systemResolver(file), undefined);
  assert.equal(await systemResolver(join(dir, 'missing')), undefined);
});
