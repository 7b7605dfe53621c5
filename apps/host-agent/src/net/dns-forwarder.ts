/**
 * The DNS resolver tenant VMs use: their gateway port 53, redirected by the ruleset to this
 * forwarder, which relays to the host's upstream resolver. VMs never reach the upstream (often
 * a private address they must not touch) themselves, and the forwarder answers only sources in
 * the VM network, so it is no open resolver even where the firewall would let others in.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { readFile } from 'node:fs/promises';
import { connect, createServer, isIPv6, type Server, type Socket as TcpSocket } from 'node:net';
import { WarrenError } from '@warren/protocol';
import { cidrContains, parseIpv4 } from './address.ts';

export interface DnsForwarderOptions {
  port: number;
  /** Upstream resolver, `host` or `host:port` (`[v6]:port`). */
  upstream: { host: string; port: number };
  /** Only clients in this network are answered. */
  clients: { base: number; prefix: number };
  /** Bind address; all of the host's addresses by default, since each VM comes in on its own gateway. */
  host?: string;
  log?: (message: string) => void;
  timeoutMs?: number;
}

/** Largest DNS message over UDP with EDNS that we relay. */
const MAX_UDP = 4096;
const MAX_PENDING = 512;
const MAX_PENDING_PER_CLIENT = 64;
const MAX_TCP = 128;

/** Parses WARREN_VM_DNS_UPSTREAM: `1.1.1.1`, `1.1.1.1:5353`, `::1`, `[::1]:53`. */
export function parseUpstream(text: string): { host: string; port: number } {
  const v6 = /^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/.exec(text);
  if (v6) return { host: v6[1]!, port: Number(v6[2] ?? 53) };
  if (isIPv6(text)) return { host: text, port: 53 };
  const v4 = /^([\d.]+)(?::(\d{1,5}))?$/.exec(text);
  if (v4) {
    parseIpv4(v4[1]!);
    const port = Number(v4[2] ?? 53);
    if (port >= 1 && port <= 65535) return { host: v4[1]!, port };
  }
  throw new WarrenError('INVALID_ARGUMENT', `not a resolver address (ip or ip:port): ${text}`);
}

/** The first nameserver in resolv.conf, which is what the host itself uses. */
export async function systemResolver(path = '/etc/resolv.conf'): Promise<string | undefined> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return /^\s*nameserver\s+(\S+)/m.exec(text)?.[1];
}

export class DnsForwarder {
  readonly #o: DnsForwarderOptions;
  #udp: Socket | undefined;
  #tcp: Server | undefined;
  #pending = 0;
  readonly #perClient = new Map<string, number>();
  readonly #conns = new Set<TcpSocket>();

  constructor(options: DnsForwarderOptions) {
    this.#o = options;
  }

  get listening(): boolean {
    return this.#udp !== undefined;
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
    this.#udp?.close();
    this.#tcp?.close();
    for (const c of this.#conns) c.destroy();
    this.#udp = undefined;
    this.#tcp = undefined;
  }

  #allowed(address: string): boolean {
    try {
      return cidrContains(this.#o.clients, { base: parseIpv4(address), prefix: 32 });
    } catch {
      return false;
    }
  }

  #relayUdp(server: Socket, query: Buffer, from: RemoteInfo): void {
    if (!this.#allowed(from.address) || query.length < 12 || query.length > MAX_UDP) return;
    const mine = this.#perClient.get(from.address) ?? 0;
    if (this.#pending >= MAX_PENDING || mine >= MAX_PENDING_PER_CLIENT) return;
    this.#pending++;
    this.#perClient.set(from.address, mine + 1);
    const { host, port } = this.#o.upstream;
    // A fresh socket per query: a random source port each time, and replies cannot cross queries.
    const up = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4' });
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      up.close();
      this.#pending--;
      const left = (this.#perClient.get(from.address) ?? 1) - 1;
      if (left > 0) this.#perClient.set(from.address, left);
      else this.#perClient.delete(from.address);
    };
    const timer = setTimeout(finish, this.#o.timeoutMs ?? 5_000);
    up.on('error', finish);
    up.on('message', (reply, rinfo) => {
      if (rinfo.port !== port || reply.length < 12 || reply.readUInt16BE(0) !== query.readUInt16BE(0)) return;
      server.send(reply, from.port, from.address, () => {});
      finish();
    });
    up.connect(port, host, () => up.send(query, (e) => e && finish()));
  }

  #relayTcp(client: TcpSocket): void {
    const from = client.remoteAddress?.replace(/^::ffff:/, '') ?? '';
    if (!this.#allowed(from) || this.#conns.size >= MAX_TCP) {
      client.destroy();
      return;
    }
    this.#conns.add(client);
    const up = connect({ host: this.#o.upstream.host, port: this.#o.upstream.port });
    const timeoutMs = this.#o.timeoutMs ?? 5_000;
    const close = () => {
      client.destroy();
      up.destroy();
      this.#conns.delete(client);
    };
    client.setTimeout(timeoutMs * 2, close);
    up.setTimeout(timeoutMs * 2, close);
    client.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
    // DNS over TCP is length-prefixed on both sides, so the bytes pass through unchanged.
    client.pipe(up);
    up.pipe(client);
  }
}
