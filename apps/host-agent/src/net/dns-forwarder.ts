/**
 * The DNS resolver tenant VMs use: their gateway port 53, redirected by the ruleset to this
 * forwarder, which relays to the host's upstream resolver. VMs never reach the upstream (often
 * a private address they must not touch) themselves, and the forwarder answers only the VMs it
 * is told about, so it is no open resolver even where the firewall would let others in.
 *
 * A guest is hostile: it gets standard queries only (dns-message.ts), each VM its own query rate
 * and TCP connections, and nothing it sends, nor an upstream that cannot be reached, may throw
 * out of a handler (that would end the agent and every tenant's exec and dashboards with it).
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { readFile } from 'node:fs/promises';
import { connect, createServer, isIPv6, type Server, type Socket as TcpSocket } from 'node:net';
import { WarrenError } from '@warren/protocol';
import { parseIpv4 } from './address.ts';
import { checkQuery, MAX_QUERY_BYTES, nameAllowed, refusedReply } from './dns-message.ts';

/** What one VM may ask the forwarder; VMs without an entry (egress `none`) get no answer at all. */
export interface DnsClientPolicy {
  /** `any`: every name; otherwise only these names and the names below them (an empty list: none). */
  names: 'any' | readonly string[];
}

/** Per-VM limits, so that no VM can take the forwarder from the others (settings in config.ts). */
export interface DnsLimits {
  /** Queries per second each VM may send (UDP and TCP together); one second's worth can come at once. */
  queriesPerSecond: number;
  /** Open TCP connections per VM. */
  tcpPerVm: number;
  /** A TCP connection with nothing sent or received for this long is closed. */
  tcpIdleMs: number;
}

export interface DnsForwarderOptions {
  port: number;
  /** Upstream resolver, `host` or `host:port` (`[v6]:port`). */
  upstream: { host: string; port: number };
  limits: DnsLimits;
  /** Bind address; all of the host's addresses by default, since each VM comes in on its own gateway. */
  host?: string;
  log?: (message: string) => void;
  timeoutMs?: number;
}

/**
 * Host-wide backstops against running out of file descriptors. Per-VM limits are what keep VMs
 * apart; these are far above any one VM's share (a VM has at most MAX_PENDING_PER_CLIENT queries
 * and tcpPerVm connections open).
 */
const MAX_PENDING = 4096;
const MAX_PENDING_PER_CLIENT = 32;
const MAX_TCP = 2048;
/** Bytes queued towards a TCP peer that does not read before its connection is closed. */
const MAX_TCP_BACKLOG = 64 * 1024;

/** Parses WARREN_VM_DNS_UPSTREAM: `1.1.1.1`, `1.1.1.1:5353`, `::1`, `[::1]:53`. */
export function parseUpstream(text: string): { host: string; port: number } {
  // A port outside 1-65535 would make every relayed query throw in connect().
  const valid = (port: number) => port >= 1 && port <= 65535;
  const v6 = /^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/.exec(text);
  if (v6 && isIPv6(v6[1]!) && valid(Number(v6[2] ?? 53))) return { host: v6[1]!, port: Number(v6[2] ?? 53) };
  if (isIPv6(text)) return { host: text, port: 53 };
  const v4 = /^([\d.]+)(?::(\d{1,5}))?$/.exec(text);
  if (v4) {
    parseIpv4(v4[1]!);
    const port = Number(v4[2] ?? 53);
    if (valid(port)) return { host: v4[1]!, port };
  }
  throw new WarrenError('INVALID_ARGUMENT', `not a resolver address (ip or ip:port): ${text}`);
}

/** The first nameserver in resolv.conf, which is what the host itself uses. */
export async function systemResolver(path = '/etc/resolv.conf'): Promise<string | undefined> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return /^\s*nameserver\s+(\S+)/m.exec(text)?.[1];
}

/** A DNS message with its two-byte length, as DNS over TCP sends it. */
function framed(msg: Buffer): Buffer {
  const length = Buffer.alloc(2);
  length.writeUInt16BE(msg.length);
  return Buffer.concat([length, msg]);
}

export class DnsForwarder {
  readonly #o: DnsForwarderOptions;
  #udp: Socket | undefined;
  #tcp: Server | undefined;
  #clients: ReadonlyMap<string, DnsClientPolicy> = new Map();
  /** Token buckets of the query rate, by VM address; only VMs in #clients have one. */
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  /** UDP queries in flight: each entry ends one (closes its upstream socket). */
  readonly #pending = new Set<() => void>();
  readonly #pendingBy = new Map<string, number>();
  readonly #conns = new Map<TcpSocket, string>();
  readonly #tcpBy = new Map<string, number>();

  constructor(options: DnsForwarderOptions) {
    this.#o = options;
  }

  get listening(): boolean {
    return this.#udp !== undefined;
  }

  /**
   * The VMs that may use DNS, by their guest address (the ruleset drops spoofed sources before
   * they get here), and what each may ask. Anyone else is ignored; connections of VMs no longer
   * listed are closed.
   */
  setClients(clients: ReadonlyMap<string, DnsClientPolicy>): void {
    this.#clients = new Map(clients);
    for (const address of this.#buckets.keys()) if (!clients.has(address)) this.#buckets.delete(address);
    for (const [conn, address] of this.#conns) if (!clients.has(address)) conn.destroy();
  }

  async start(): Promise<void> {
    if (this.#udp) return;
    const host = this.#o.host ?? '0.0.0.0';
    const udp = createSocket({ type: 'udp4' });
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind({ port: this.#o.port, address: host }, () => {
        udp.off('error', reject);
        resolve();
      });
    });
    udp.on('error', (e) => this.#o.log?.(`DNS forwarder (UDP): ${e.message}`));
    udp.on('message', (msg, from) => this.#relayUdp(udp, msg, from));
    const tcp = createServer((c) => this.#relayTcp(c));
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen({ port: this.#o.port, host }, () => {
          tcp.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      udp.close();
      throw e;
    }
    tcp.on('error', (e) => this.#o.log?.(`DNS forwarder (TCP): ${e.message}`));
    // The agent's API keeps the daemon alive; an in-process host (CLI, tests) may exit with it open.
    udp.unref();
    tcp.unref();
    this.#udp = udp;
    this.#tcp = tcp;
  }

  close(): void {
    const udp = this.#udp;
    const tcp = this.#tcp;
    this.#udp = undefined;
    this.#tcp = undefined;
    for (const end of [...this.#pending]) end();
    for (const conn of this.#conns.keys()) conn.destroy();
    udp?.close();
    tcp?.close();
  }

  /** Takes one token of this VM's bucket; false when the VM is over its rate. */
  #take(address: string): boolean {
    const rate = this.#o.limits.queriesPerSecond;
    const now = performance.now();
    const bucket = this.#buckets.get(address) ?? { tokens: rate, at: now };
    bucket.tokens = Math.min(rate, bucket.tokens + ((now - bucket.at) * rate) / 1000);
    bucket.at = now;
    this.#buckets.set(address, bucket);
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  /**
   * What to do with a message from a VM: relay it, answer it here (REFUSED), or drop it
   * (not a listed VM, over its rate, not a query). Every message costs a token, refused ones
   * too, so a flood of junk is no cheaper than a flood of queries.
   */
  #judge(from: string, msg: Buffer): 'relay' | Buffer | undefined {
    const policy = this.#clients.get(from);
    if (!policy || !this.#take(from)) return undefined;
    const verdict = checkQuery(msg);
    if (verdict.kind === 'drop') return undefined;
    if (verdict.kind === 'refuse') return refusedReply(msg, verdict.question);
    if (policy.names !== 'any' && !nameAllowed(verdict.name, policy.names)) {
      return refusedReply(msg, verdict.question);
    }
    return 'relay';
  }

  #relayUdp(server: Socket, query: Buffer, from: RemoteInfo): void {
    const verdict = this.#judge(from.address, query);
    if (verdict === undefined) return;
    if (verdict !== 'relay') {
      this.#answer(server, verdict, from);
      return;
    }
    const mine = this.#pendingBy.get(from.address) ?? 0;
    if (this.#pending.size >= MAX_PENDING || mine >= MAX_PENDING_PER_CLIENT) return;
    this.#pendingBy.set(from.address, mine + 1);
    const { host, port } = this.#o.upstream;
    // A fresh socket per query: a random source port each time, and replies cannot cross queries.
    const up = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4' });
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      this.#pending.delete(finish);
      up.close();
      const left = (this.#pendingBy.get(from.address) ?? 1) - 1;
      if (left > 0) this.#pendingBy.set(from.address, left);
      else this.#pendingBy.delete(from.address);
    };
    this.#pending.add(finish);
    const timer = setTimeout(finish, this.#o.timeoutMs ?? 5_000);
    up.on('error', finish);
    up.on('message', (reply, rinfo) => {
      if (rinfo.port !== port || reply.length < 12 || reply.readUInt16BE(0) !== query.readUInt16BE(0)) return;
      if (!(reply[2]! & 0x80)) return;
      this.#answer(server, reply, from);
      finish();
    });
    // connect() hands its failure (no route to the upstream, an address it may not send to) to
    // this callback and nowhere else; a send() on the unconnected socket would then throw outside
    // any handler and end the whole agent. `done`: the query may have ended while connecting.
    up.connect(port, host, (e?: Error) => {
      if (e || done) finish();
      else up.send(query, (err) => err && finish());
    });
  }

  /** Sends to a VM through the forwarder's own socket, unless it was closed meanwhile (that would throw). */
  #answer(server: Socket, msg: Buffer, to: RemoteInfo): void {
    if (this.#udp !== server) return;
    server.send(msg, to.port, to.address, () => {});
  }

  #relayTcp(client: TcpSocket): void {
    const from = client.remoteAddress?.replace(/^::ffff:/, '') ?? '';
    const open = this.#tcpBy.get(from) ?? 0;
    if (!this.#clients.has(from) || open >= this.#o.limits.tcpPerVm || this.#conns.size >= MAX_TCP) {
      client.destroy();
      return;
    }
    this.#conns.set(client, from);
    this.#tcpBy.set(from, open + 1);
    let up: TcpSocket | undefined;
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      client.destroy();
      up?.destroy();
      this.#conns.delete(client);
      const left = (this.#tcpBy.get(from) ?? 1) - 1;
      if (left > 0) this.#tcpBy.set(from, left);
      else this.#tcpBy.delete(from);
    };
    client.setTimeout(this.#o.limits.tcpIdleMs, close);
    client.on('error', close).on('close', close);
    let buffered: Buffer = Buffer.alloc(0);
    // Each message is taken apart and judged like a UDP one, never passed through as bytes:
    // that is what keeps zone transfers and updates off TCP.
    client.on('data', (chunk: Buffer) => {
      buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
      while (!closed && buffered.length >= 2) {
        const length = buffered.readUInt16BE(0);
        // Longer than any query: what follows cannot be trusted to be framed right either.
        if (length > MAX_QUERY_BYTES) return close();
        if (buffered.length < 2 + length) break;
        const msg = buffered.subarray(2, 2 + length);
        buffered = buffered.subarray(2 + length);
        const verdict = this.#judge(from, msg);
        if (verdict === undefined) continue;
        let target = client;
        if (verdict === 'relay') {
          up ??= this.#connectUpstream(client, close);
          target = up;
        }
        // A peer that does not read gets its connection closed rather than our memory.
        if (target.writableLength > MAX_TCP_BACKLOG) return close();
        target.write(framed(verdict === 'relay' ? msg : verdict));
      }
    });
  }

  #connectUpstream(client: TcpSocket, close: () => void): TcpSocket {
    const up = connect({ host: this.#o.upstream.host, port: this.#o.upstream.port });
    up.setTimeout(this.#o.limits.tcpIdleMs, close);
    up.on('error', close).on('close', close);
    // Answers pass through as they come (length-prefixed already), at the pace the VM reads them.
    up.pipe(client);
    return up;
  }
}
