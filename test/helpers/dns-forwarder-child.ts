/**
 * The VMs' DNS forwarder alone in a process of its own, with no handler for uncaught exceptions
 * (the host agent has none either): whatever escapes the forwarder's handlers ends this process,
 * as it would end the agent. test/unit/net-dns.test.ts runs it.
 *
 * `scripts/node.sh dns-forwarder-child.ts <upstream ip> <upstream port>`: serves 127.0.0.1 on a
 * free port, prints `port <n>` and runs until killed.
 * `... close-while-pending`: closes the forwarder while a query is out at a loopback upstream that
 * answers only after that, then prints `survived`.
 */
import { createSocket } from 'node:dgram';
import { DnsForwarder } from '@warren/host-agent';
import { freePort } from './free-port.ts';

const limits = { queriesPerSecond: 1000, tcpPerVm: 8, tcpIdleMs: 5000 };
const clients = new Map([['127.0.0.1', { names: 'any' as const }]]);

/** A standard query for web.example.test, type A. */
const QUERY = Buffer.from('00070100000100000000000003776562076578616d706c6504746573740000010001', 'hex');

if (process.argv[2] === 'close-while-pending') {
  const upstream = createSocket('udp4');
  // Told after the late answer went out; loopback queues both datagrams at once, in order.
  const marker = createSocket('udp4');
  await new Promise<void>((r) => marker.bind(0, '127.0.0.1', r));
  const answered = new Promise((r) => marker.once('message', r));
  let forwarder: DnsForwarder | undefined;
  upstream.on('message', (m, from) => {
    forwarder?.close();
    const reply = Buffer.from(m);
    reply.writeUInt16BE(0x8180, 2);
    // The answer comes back to a forwarder that is closed by now.
    upstream.send(reply, from.port, from.address, () =>
      upstream.send('done', marker.address().port, '127.0.0.1'),
    );
  });
  await new Promise<void>((r) => upstream.bind(0, '127.0.0.1', r));
  const port = await freePort();
  forwarder = new DnsForwarder({
    port,
    host: '127.0.0.1',
    upstream: { host: '127.0.0.1', port: upstream.address().port },
    limits,
    timeoutMs: 2000,
  });
  await forwarder.start();
  forwarder.setClients(clients);
  const client = createSocket('udp4');
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', r));
  client.send(QUERY, port, '127.0.0.1');
  await answered;
  // The late answer was ready in the same or an earlier poll of the event loop as the marker:
  // once this turn is over, it has been handled (or has ended the process).
  await new Promise((r) => setImmediate(r));
  for (const s of [client, upstream, marker]) s.close();
  process.stdout.write('survived\n');
} else {
  const port = await freePort();
  const forwarder = new DnsForwarder({
    port,
    host: '127.0.0.1',
    upstream: { host: process.argv[2]!, port: Number(process.argv[3]) },
    limits,
    timeoutMs: 1000,
  });
  await forwarder.start();
  forwarder.setClients(clients);
  // The forwarder's sockets are unref'd (the agent's API keeps it alive); here this does.
  setInterval(() => {}, 60_000);
  process.stdout.write(`port ${port}\n`);
}
