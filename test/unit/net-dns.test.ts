/**
 * The VMs' DNS forwarder with real sockets on loopback, against a fake upstream resolver (the
 * upstream lies outside the unit). Each VM is a loopback source address (127.0.0.x), since the
 * forwarder tells VMs apart by their guest address. It relays standard queries, refuses
 * everything else, keeps each VM to its own rate and TCP connections, answers no VM it was not
 * told about, and survives an upstream it cannot reach.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket as TcpSocket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import {
  checkQuery,
  type DnsClientPolicy,
  DnsForwarder,
  type DnsLimits,
  loadConfig,
  refusedReply,
  systemResolver,
} from '@warren/host-agent';
import { freePort } from '../helpers/free-port.ts';
import { until } from '../helpers/until.ts';

const REPO_ROOT = join(import.meta.dirname, '..', '..');

const TYPE = { A: 1, OPT: 41, IXFR: 251, AXFR: 252, ANY: 255 };
const REFUSED = 5;

/** A DNS message for `name`: a standard query of type A unless told otherwise. */
function query(
  id: number,
  name: string,
  o: {
    type?: number;
    qclass?: number;
    opcode?: number;
    qr?: boolean;
    questions?: number;
    answers?: number;
  } = {},
): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  const question = Buffer.concat([...labels, Buffer.from([0, 0, o.type ?? TYPE.A, 0, o.qclass ?? 1])]);
  question.writeUInt16BE(o.type ?? TYPE.A, question.length - 4);
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE((o.qr ? 0x8000 : 0) | ((o.opcode ?? 0) << 11) | 0x0100, 2);
  header.writeUInt16BE(o.questions ?? 1, 4);
  header.writeUInt16BE(o.answers ?? 0, 6);
  const rest = Array.from({ length: (o.questions ?? 1) - 1 }, () => question);
  // An answer record (a name pointer to the question, type A, 4 bytes of data), as UPDATE carries.
  const answer = Buffer.from('c00c000100010000003c0004c0000201', 'hex');
  return Buffer.concat([header, question, ...rest, ...Array.from({ length: o.answers ?? 0 }, () => answer)]);
}

const rcode = (reply: Buffer) => reply.readUInt16BE(2) & 0xf;
const framed = (msg: Buffer) => {
  const len = Buffer.alloc(2);
  len.writeUInt16BE(msg.length);
  return Buffer.concat([len, msg]);
};

/** The upstream: answers each query with QR set, RCODE 0 and a marker byte appended; records what it saw. */
const upstreamSeen: { via: 'udp' | 'tcp'; id: number; from: string }[] = [];
let upstreamUdp: Socket;
let upstreamTcp: Server;
const dir = await mkdtemp(join(tmpdir(), 'wt-dns-'));
const forwarders: DnsForwarder[] = [];
const sockets = new Set<TcpSocket>();

function answer(q: Buffer): Buffer {
  const a = Buffer.concat([q, Buffer.from([0x2a])]);
  a.writeUInt16BE(0x8180, 2);
  return a;
}

const LIMITS: DnsLimits = { queriesPerSecond: 1000, tcpPerVm: 4, tcpIdleMs: 5000 };

/** A forwarder on loopback answering these VMs (by source address). */
async function forwarder(
  clients: Record<string, DnsClientPolicy['names']>,
  limits: Partial<DnsLimits> = {},
): Promise<{ port: number; f: DnsForwarder }> {
  const port = await freePort();
  const f = new DnsForwarder({
    port,
    host: '127.0.0.1',
    upstream: { host: '127.0.0.1', port: upstreamUdp.address().port },
    limits: { ...LIMITS, ...limits },
    timeoutMs: 1000,
  });
  await f.start();
  f.setClients(new Map(Object.entries(clients).map(([ip, names]) => [ip, { names }])));
  forwarders.push(f);
  return { port, f };
}

before(async () => {
  upstreamUdp = createSocket('udp4');
  upstreamUdp.on('message', (m, r) => {
    upstreamSeen.push({ via: 'udp', id: m.readUInt16BE(0), from: r.address });
    upstreamUdp.send(answer(m), r.port, r.address);
  });
  await new Promise<void>((r) => upstreamUdp.bind(0, '127.0.0.1', r));
  upstreamTcp = createServer((c) => {
    sockets.add(c);
    let buf = Buffer.alloc(0);
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const q = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + q.length);
        upstreamSeen.push({ via: 'tcp', id: q.readUInt16BE(0), from: c.remoteAddress ?? '' });
        c.write(framed(answer(q)));
      }
    });
    c.on('error', () => {});
  });
  await new Promise<void>((r) => upstreamTcp.listen(upstreamUdp.address().port, '127.0.0.1', r));
});

after(async () => {
  for (const f of forwarders) f.close();
  for (const s of sockets) s.destroy();
  upstreamUdp?.close();
  upstreamTcp?.close();
  await rm(dir, { recursive: true, force: true });
});

/** Sends each message from `from` (one socket) and collects the replies that come within `waitMs`. */
async function udpAsk(
  port: number,
  from: string,
  msgs: Buffer[],
  waitMs = 1500,
): Promise<Map<number, Buffer>> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, from, r));
  const replies = new Map<number, Buffer>();
  const all = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, waitMs);
    s.on('message', (m) => {
      replies.set(m.readUInt16BE(0), m);
      if (replies.size === msgs.length) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  for (const m of msgs) s.send(m, port, '127.0.0.1');
  await all;
  s.close();
  return replies;
}

/** One TCP connection from `from`; `ask` sends a framed message and resolves with the framed answer. */
function tcpConnect(port: number, from: string): Promise<{ socket: TcpSocket; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress: from }, () =>
      resolve({ socket, closed: new Promise((r) => socket.once('close', () => r())) }),
    );
    sockets.add(socket);
    socket.on('error', reject);
  });
}

async function tcpAsk(port: number, from: string, msg: Buffer): Promise<Buffer | 'closed'> {
  const { socket } = await tcpConnect(port, from);
  socket.on('error', () => {});
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        socket.destroy();
        resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
      }
    });
    socket.on('close', () => resolve('closed'));
    socket.write(framed(msg));
  });
}

const seenIds = (ids: number[]) => upstreamSeen.filter((s) => ids.includes(s.id));

describe('relaying', () => {
  test('UDP queries are relayed to the upstream and the answers come back to the asker', async () => {
    const { port } = await forwarder({ '127.0.0.1': 'any' });
    const replies = await udpAsk(
      port,
      '127.0.0.1',
      [1, 2, 3].map((id) => query(id, 'web.example.test')),
    );
    for (const id of [1, 2, 3]) {
      assert.equal(replies.get(id)?.at(-1), 0x2a, `answer ${id}`);
    }
    assert.deepEqual(
      seenIds([1, 2, 3]).map((s) => `${s.via}:${s.id}`),
      ['udp:1', 'udp:2', 'udp:3'],
    );
  });

  test('TCP queries are relayed too (length-prefixed both ways)', async () => {
    const { port } = await forwarder({ '127.0.0.1': 'any' });
    const reply = await tcpAsk(port, '127.0.0.1', query(77, 'web.example.test'));
    assert.ok(reply !== 'closed');
    assert.equal(reply.readUInt16BE(0), 77);
    assert.equal(rcode(reply), 0);
    assert.deepEqual(
      seenIds([77]).map((s) => s.via),
      ['tcp'],
    );
  });

  test('a query with an EDNS OPT record is a standard query', () => {
    const q = query(5, 'web.example.test');
    q.writeUInt16BE(1, 10);
    const opt = Buffer.from('0000291000000000000000', 'hex');
    assert.equal(checkQuery(Buffer.concat([q, opt])).kind, 'query');
    assert.equal(checkQuery(Buffer.concat([q, opt, Buffer.from([0])])).kind, 'refuse', 'trailing bytes');
  });
});

describe('what a VM may send (finding 5)', () => {
  test('UPDATE, NOTIFY, ANY, AXFR, IXFR, class CH, two questions and records in a query are refused, and none reaches the upstream', async () => {
    const { port } = await forwarder({ '127.0.0.2': 'any' });
    const attacks: [string, Buffer][] = [
      ['UPDATE', query(101, 'example.test', { opcode: 5, type: 6, answers: 1 })],
      ['NOTIFY', query(102, 'example.test', { opcode: 4, type: 6 })],
      ['ANY', query(103, 'web.example.test', { type: TYPE.ANY })],
      ['AXFR over UDP', query(104, 'example.test', { type: TYPE.AXFR })],
      ['IXFR', query(105, 'example.test', { type: TYPE.IXFR })],
      ['class CH (version.bind)', query(106, 'version.bind', { type: 16, qclass: 3 })],
      ['two questions', query(107, 'web.example.test', { questions: 2 })],
      ['an answer in a query', query(108, 'web.example.test', { answers: 1 })],
    ];
    const replies = await udpAsk(
      port,
      '127.0.0.2',
      attacks.map(([, m]) => m),
    );
    assert.deepEqual(
      Object.fromEntries(
        attacks.map(([what], i) => [what, replies.get(101 + i) && rcode(replies.get(101 + i)!)]),
      ),
      Object.fromEntries(attacks.map(([what]) => [what, REFUSED])),
    );
    assert.deepEqual(seenIds(attacks.map((_, i) => 101 + i)), []);
    // The refusal echoes the question where there is one, so the guest's resolver matches it.
    assert.equal(replies.get(103)!.readUInt16BE(4), 1);
  });

  test('a response is not answered at all, and not relayed (no loop between resolvers)', async () => {
    const { port } = await forwarder({ '127.0.0.2': 'any' });
    const replies = await udpAsk(port, '127.0.0.2', [query(120, 'web.example.test', { qr: true })], 500);
    assert.equal(replies.size, 0);
    assert.deepEqual(seenIds([120]), []);
  });

  test('a zone transfer over TCP is refused and never reaches the upstream', async () => {
    const { port } = await forwarder({ '127.0.0.2': 'any' });
    for (const [id, type] of [
      [130, TYPE.AXFR],
      [131, TYPE.IXFR],
    ] as const) {
      const reply = await tcpAsk(port, '127.0.0.2', query(id, 'example.test', { type }));
      assert.ok(reply !== 'closed', `type ${type}: the connection was closed without an answer`);
      assert.equal(rcode(reply), REFUSED);
    }
    assert.deepEqual(seenIds([130, 131]), []);
  });

  test('a TCP message longer than any query ends the connection', async () => {
    const { port } = await forwarder({ '127.0.0.2': 'any' });
    const big = Buffer.concat([query(140, 'web.example.test'), Buffer.alloc(2000)]);
    assert.equal(await tcpAsk(port, '127.0.0.2', big), 'closed');
    assert.deepEqual(seenIds([140]), []);
  });

  test('one VM flooding queries gets its rate and no more, while another VM is answered meanwhile', async () => {
    const rate = 5;
    const { port } = await forwarder({ '127.0.0.3': 'any', '127.0.0.4': 'any' }, { queriesPerSecond: rate });
    const ids = Array.from({ length: 50 }, (_, i) => 1000 + i);
    const start = performance.now();
    const [flood, other] = await Promise.all([
      udpAsk(
        port,
        '127.0.0.3',
        ids.map((id) => query(id, 'web.example.test')),
      ),
      udpAsk(port, '127.0.0.4', [query(2000, 'web.example.test')]),
    ]);
    const relayed = upstreamSeen.filter((s) => s.id >= 1000 && s.id < 1050);
    const lastRelayed = performance.now() - start;
    // A full bucket (one second's worth) plus what refilled while the queries came in.
    const bound = rate + Math.ceil((rate * lastRelayed) / 1000);
    assert.ok(relayed.length <= bound, `${relayed.length} of 50 relayed, at most ${bound} expected`);
    assert.ok(relayed.length < ids.length, 'the flood was cut');
    assert.equal(flood.size, relayed.length, 'only relayed queries were answered');
    assert.equal(other.get(2000)?.at(-1), 0x2a, 'the other VM was answered');
  });

  test('one VM opening many TCP connections keeps only its own share; another VM still gets in', async () => {
    const perVm = 2;
    const { port } = await forwarder({ '127.0.0.5': 'any', '127.0.0.6': 'any' }, { tcpPerVm: perVm });
    // More than the host-wide limit a forwarder without per-VM limits had (128).
    const conns = await Promise.all(Array.from({ length: 140 }, () => tcpConnect(port, '127.0.0.5')));
    let closed = 0;
    for (const c of conns) void c.closed.then(() => closed++);
    await until('all but the VM’s share are closed', () => closed === conns.length - perVm, 10_000);
    const reply = await tcpAsk(port, '127.0.0.6', query(150, 'web.example.test'));
    assert.ok(reply !== 'closed', 'the other VM’s connection was refused');
    assert.equal(reply.readUInt16BE(0), 150);
    assert.equal(closed, conns.length - perVm, 'the first VM’s share stays open');
    for (const c of conns) c.socket.destroy();
  });

  test('an idle TCP connection is closed after the idle timeout, freeing its slot', async () => {
    const { port } = await forwarder({ '127.0.0.7': 'any' }, { tcpPerVm: 1, tcpIdleMs: 1000 });
    const first = await tcpConnect(port, '127.0.0.7');
    const t0 = performance.now();
    await first.closed;
    assert.ok(performance.now() - t0 >= 900, 'not before the timeout');
    const reply = await tcpAsk(port, '127.0.0.7', query(160, 'web.example.test'));
    assert.ok(reply !== 'closed');
  });

  test('egress none: a VM the forwarder was not told about gets nothing, over UDP or TCP', async () => {
    const { port, f } = await forwarder({ '127.0.0.8': 'any' });
    const held = await tcpConnect(port, '127.0.0.8');
    // Its policy turns to none: the host network drops it from the clients.
    f.setClients(new Map());
    await held.closed;
    const replies = await udpAsk(port, '127.0.0.8', [query(170, 'web.example.test')], 500);
    assert.equal(replies.size, 0);
    assert.equal(await tcpAsk(port, '127.0.0.8', query(171, 'web.example.test')), 'closed');
    assert.equal(
      (await udpAsk(port, '127.0.0.9', [query(172, 'web.example.test')], 500)).size,
      0,
      'nor does any other address',
    );
    assert.deepEqual(seenIds([170, 171, 172]), []);
  });

  test('allowlist DNS: only the listed names and names below them; an empty list is no DNS at all', async () => {
    const { port } = await forwarder({ '127.0.0.10': ['web.example.test'], '127.0.0.11': [] });
    const replies = await udpAsk(port, '127.0.0.10', [
      query(180, 'web.example.test'),
      query(181, 'API.Web.Example.Test'),
      query(182, 'other.example.test'),
      query(183, 'example.test'),
      query(184, 'notweb.example.test'),
    ]);
    assert.deepEqual(
      [180, 181, 182, 183, 184].map((id) => rcode(replies.get(id)!)),
      [0, 0, REFUSED, REFUSED, REFUSED],
    );
    const none = await udpAsk(port, '127.0.0.11', [query(185, 'web.example.test')]);
    assert.equal(rcode(none.get(185)!), REFUSED);
    assert.equal(
      await tcpAsk(port, '127.0.0.11', query(186, 'web.example.test')).then(
        (r) => r !== 'closed' && rcode(r),
      ),
      REFUSED,
    );
    assert.deepEqual(
      seenIds([180, 181, 182, 183, 184, 185, 186]).map((s) => s.id),
      [180, 181],
    );
  });

  test('REFUSED keeps the id, opcode and RD of the query', () => {
    const q = query(0xbeef, 'web.example.test', { opcode: 4 });
    const r = refusedReply(q);
    assert.equal(r.length, 12);
    assert.equal(r.readUInt16BE(0), 0xbeef);
    assert.equal(r.readUInt16BE(2), 0x8000 | (4 << 11) | 0x0100 | 0x0080 | REFUSED);
  });
});

/** The forwarder in a process of its own (test/helpers/dns-forwarder-child.ts); resolves once it serves. */
function child(args: string[]) {
  const proc = spawn(
    join(REPO_ROOT, 'scripts', 'node.sh'),
    [join(REPO_ROOT, 'test/helpers/dns-forwarder-child.ts'), ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  proc.stderr.on('data', (c) => (stderr += c));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const lines = createInterface({ input: proc.stdout });
  // The first line, or '' when the process ends without one.
  const line = new Promise<string>((resolve) => {
    lines.once('line', resolve);
    lines.once('close', () => resolve(''));
  });
  return { proc, exited, line, stderr: () => stderr };
}

describe('an upstream that cannot be reached (finding 10)', () => {
  test('queries over UDP and TCP end nothing: the process keeps running and answering', async (t) => {
    // connect() to the broadcast address fails at once (EACCES, no packet sent) just as it fails
    // with ENETUNREACH in a network namespace without a route (an outage), and without root.
    const c = child(['255.255.255.255', '53']);
    t.after(() => {
      if (c.proc.exitCode === null) c.proc.kill('SIGKILL');
    });
    const ready = await Promise.race([c.line, c.exited.then((code) => `exited ${code}`)]);
    const port = Number(/^port (\d+)$/.exec(ready)?.[1]);
    assert.ok(port > 0, `${ready}: ${c.stderr()}`);
    await udpAsk(port, '127.0.0.1', [query(190, 'web.example.test'), query(191, 'other.example.test')], 300);
    assert.equal(c.proc.exitCode, null, `the forwarder's process ended: ${c.stderr()}`);
    assert.equal(await tcpAsk(port, '127.0.0.1', query(192, 'web.example.test')), 'closed');
    // Still serving: what it answers itself (a refusal) still comes back.
    const after = await udpAsk(port, '127.0.0.1', [query(193, 'web.example.test', { type: TYPE.ANY })]);
    assert.equal(c.proc.exitCode, null, `the forwarder's process ended: ${c.stderr()}`);
    assert.equal(after.get(193) && rcode(after.get(193)!), REFUSED, c.stderr());
  });

  test('an answer that comes after the forwarder was closed ends nothing', async () => {
    const c = child(['close-while-pending']);
    const [line, code] = await Promise.all([c.line, c.exited]);
    assert.equal(line, 'survived', c.stderr());
    assert.equal(code, 0, c.stderr());
  });
});

test('DNS settings: defaults, their variables, and bad values named', () => {
  const c = loadConfig({});
  assert.deepEqual(
    [c.vmDnsQueriesPerSecond, c.vmDnsTcpPerVm, c.vmDnsTcpIdleMs, c.vmDnsAllowlistNames],
    [50, 4, 10_000, 'any'],
  );
  const set = loadConfig({
    WARREN_VM_DNS_QPS: '20',
    WARREN_VM_DNS_TCP_PER_VM: '2',
    WARREN_VM_DNS_TCP_IDLE_MS: '3000',
    WARREN_VM_DNS_ALLOWLIST_NAMES: 'PyPI.org., files.pythonhosted.org',
  });
  assert.deepEqual(
    [set.vmDnsQueriesPerSecond, set.vmDnsTcpPerVm, set.vmDnsTcpIdleMs, set.vmDnsAllowlistNames],
    [20, 2, 3000, ['pypi.org', 'files.pythonhosted.org']],
  );
  assert.deepEqual(loadConfig({ WARREN_VM_DNS_ALLOWLIST_NAMES: 'none' }).vmDnsAllowlistNames, []);
  assert.equal(loadConfig({ WARREN_VM_DNS_ALLOWLIST_NAMES: '*' }).vmDnsAllowlistNames, 'any');
  assert.throws(
    () => loadConfig({ WARREN_VM_DNS_ALLOWLIST_NAMES: 'a b.example' }),
    /WARREN_VM_DNS_ALLOWLIST_NAMES/,
  );
  assert.throws(() => loadConfig({ WARREN_VM_DNS_QPS: '0' }), /WARREN_VM_DNS_QPS/);
  assert.throws(() => loadConfig({ WARREN_VM_DNS_TCP_PER_VM: 'many' }), /WARREN_VM_DNS_TCP_PER_VM/);
});

test('the host resolver is the first nameserver of resolv.conf', async () => {
  const file = join(dir, 'resolv.conf');
  await writeFile(file, '# generated\nsearch example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n');
  assert.equal(await systemResolver(file), '192.0.2.53');
  await writeFile(file, 'search example\n');
  assert.equal(await systemResolver(file), undefined);
  assert.equal(await systemResolver(join(dir, 'missing')), undefined);
});
