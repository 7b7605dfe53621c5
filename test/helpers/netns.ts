/**
 * A network lab made of namespaces the test owns, so that tenant networking can be tested with
 * real packets without any of them reaching a real network (docs: MACHINE-FACTS, safety rule):
 *
 *   root namespace (the test) ── veth, a /30 of 198.18.0.0/15 ──  "host" namespace
 *                                                                  (host agent, QEMU, TAPs)
 *                                                                        │ veth 198.51.100.0/30,
 *                                                                        │ the host's default route
 *                                                                  "internet" namespace
 *                                                                  (simulated hosts, no route out)
 *
 * The internet namespace has only its loopback and that veth: whatever the host forwards ends
 * there. The root side of the first veth drops any source but its peer (strict rp_filter), so
 * nothing from the VMs can use the root namespace as a way out either.
 *
 * Run as a program (`netns.ts internet`), this file is the simulated internet: HTTP servers, a
 * UDP sink and a DNS server on the addresses below, reporting what they see as JSON lines.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { writeFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

const REPO_ROOT = join(import.meta.dirname, '..', '..');

/** The simulated hosts, all inside the internet namespace. */
export const SIM = {
  /** A public-looking web server (TEST-NET-3); also a UDP sink on port 9000 and HTTP on 8080. */
  web: '203.0.113.10',
  /** Another public-looking web server, for allowlists. */
  web2: '203.0.113.20',
  /** The upstream resolver of the host's DNS forwarder. */
  dns: '203.0.113.53',
  /** A host on an internal network. */
  internal: '10.99.0.10',
  /** The cloud metadata server. */
  metadata: '169.254.169.254',
  /** Azure's WireServer: a provider service at a public address. */
  wireServer: '168.63.129.16',
  /** A public-looking host the operator blocks (WARREN_VM_BLOCKED_CIDRS), TEST-NET-1. */
  operatorBlocked: '192.0.2.10',
  /** The internet side of the host's uplink: its default gateway. */
  gateway: '198.51.100.1',
} as const;
/** The host's own address on its uplink. */
export const UPLINK_IP = '198.51.100.2';
/** Names the DNS server answers. */
export const SIM_NAMES: Record<string, string> = {
  'web.example.test': SIM.web,
  'other.example.test': SIM.web2,
};

export interface SimEvent {
  type: 'http' | 'udp' | 'dns';
  /** Where the server saw it come from. */
  from: string;
  to?: string;
  path?: string;
  data?: string;
  name?: string;
  bytes?: number;
}

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function sh(cmd: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/**
 * Build it in `before` and register `destroy` in `after` first: `destroy` removes whatever
 * part of the lab exists, so a setup that failed half-way leaves nothing behind either.
 */
export class NetLab {
  readonly id = randomBytes(3).toString('hex');
  readonly hostNs = `wn-host-${this.id}`;
  readonly inetNs = `wn-inet-${this.id}`;
  /** The root end of the veth to the host namespace. */
  readonly rootLink = `wlr${this.id}`;
  /** Root side and host side of that veth. */
  readonly rootIp: string;
  readonly hostIp: string;
  readonly #children = new Set<ChildProcess>();
  #internet: Internet | undefined;

  constructor() {
    const slot = randomInt(0, 2 ** 15 / 4) * 4;
    const base = (198 << 24) | (18 << 16);
    const ip = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
    this.rootIp = ip((base | slot) + 1);
    this.hostIp = ip((base | slot) + 2);
  }

  async setup(): Promise<void> {
    const inHost = (...a: string[]) => must('ip', ['-n', this.hostNs, ...a]);
    const inInet = (...a: string[]) => must('ip', ['-n', this.inetNs, ...a]);
    await must('ip', ['netns', 'add', this.hostNs]);
    await must('ip', ['netns', 'add', this.inetNs]);
    await inHost('link', 'set', 'lo', 'up');
    await inInet('link', 'set', 'lo', 'up');

    await must('ip', [
      'link',
      'add',
      this.rootLink,
      'type',
      'veth',
      'peer',
      'name',
      'cp0',
      'netns',
      this.hostNs,
    ]);
    await writeFile(`/proc/sys/net/ipv4/conf/${this.rootLink}/rp_filter`, '1');
    await writeFile(`/proc/sys/net/ipv6/conf/${this.rootLink}/disable_ipv6`, '1').catch(() => {});
    await must('ip', ['addr', 'add', `${this.rootIp}/30`, 'dev', this.rootLink]);
    await must('ip', ['link', 'set', this.rootLink, 'up']);
    await inHost('addr', 'add', `${this.hostIp}/30`, 'dev', 'cp0');
    await inHost('link', 'set', 'cp0', 'up');

    await inHost('link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1', 'netns', this.inetNs);
    await inHost('addr', 'add', `${UPLINK_IP}/30`, 'dev', 'up0');
    await inHost('link', 'set', 'up0', 'up');
    await inHost('route', 'add', 'default', 'via', SIM.gateway);
    await inInet('addr', 'add', `${SIM.gateway}/30`, 'dev', 'up1');
    await inInet('link', 'set', 'up1', 'up');
    for (const a of [
      SIM.web,
      SIM.web2,
      SIM.dns,
      SIM.internal,
      SIM.metadata,
      SIM.wireServer,
      SIM.operatorBlocked,
    ]) {
      await inInet('addr', 'add', `${a}/32`, 'dev', 'lo');
    }
  }

  /** A command in a namespace (`ip netns exec`), its output and exit code. */
  exec(ns: string, argv: string[]): Promise<Run> {
    return sh('ip', ['netns', 'exec', ns, ...argv]);
  }

  /**
   * A long-running process in a namespace. `nsenter --net` changes only the network namespace
   * (unlike `ip netns exec`, which remounts /sys and so hides the cgroup hierarchy).
   */
  spawn(ns: string, argv: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
    const child = spawn('nsenter', [`--net=/run/netns/${ns}`, '--', ...argv], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.#children.add(child);
    child.once('exit', () => this.#children.delete(child));
    return child;
  }

  /** Starts the simulated internet; stopped by destroy(). */
  async startInternet(): Promise<Internet> {
    const child = this.spawn(this.inetNs, [
      join(REPO_ROOT, 'scripts', 'node.sh'),
      import.meta.filename,
      'internet',
    ]);
    this.#internet = new Internet(child);
    await this.#internet.ready;
    return this.#internet;
  }

  async destroy(): Promise<void> {
    for (const child of this.#children) {
      if (child.exitCode === null && child.signalCode === null && child.pid) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await Promise.race([exited, sleep(5_000)]);
      }
    }
    // Anything else still in the namespaces was started inside them by this test (QEMU left
    // by a failed test): listed by `ip netns pids`, ended by pid.
    for (const ns of [this.hostNs, this.inetNs]) {
      const pids = (await sh('ip', ['netns', 'pids', ns])).stdout.split('\n').filter(Boolean).map(Number);
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      await sh('ip', ['netns', 'del', ns]);
    }
    // Deleting the host namespace takes the veth with it; this is for a setup that failed before the move.
    await sh('ip', ['link', 'del', this.rootLink]);
  }
}

/** The test's view of the simulated internet: what its servers saw. */
export class Internet {
  readonly events: SimEvent[] = [];
  readonly ready: Promise<void>;

  constructor(child: ChildProcess) {
    let stderr = '';
    child.stderr?.on('data', (c) => (stderr += c));
    this.ready = new Promise((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`the simulated internet exited (${code}): ${stderr}`)));
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line === 'ready') resolve();
        else this.events.push(JSON.parse(line) as SimEvent);
      });
    });
  }

  /** Events from now on; call `seen()` on the result to read them. */
  mark(): { seen: () => SimEvent[] } {
    const start = this.events.length;
    return { seen: () => this.events.slice(start) };
  }
}

/** A DNS answer for the simulated zone: A records from SIM_NAMES, NXDOMAIN otherwise. */
function dnsAnswer(query: Buffer): { reply: Buffer; name: string } | undefined {
  if (query.length < 17) return undefined;
  const labels: string[] = [];
  let i = 12;
  while (i < query.length && query[i]! > 0) {
    labels.push(query.subarray(i + 1, i + 1 + query[i]!).toString('latin1'));
    i += query[i]! + 1;
  }
  const questionEnd = i + 5;
  if (questionEnd > query.length) return undefined;
  const name = labels.join('.').toLowerCase();
  const qtype = query.readUInt16BE(i + 1);
  const address = qtype === 1 ? SIM_NAMES[name] : undefined;
  const header = Buffer.alloc(12);
  query.copy(header, 0, 0, 2);
  header.writeUInt16BE(address || SIM_NAMES[name] ? 0x8180 : 0x8183, 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(address ? 1 : 0, 6);
  const parts = [header, query.subarray(12, questionEnd)];
  if (address) {
    const rr = Buffer.alloc(16);
    rr.writeUInt16BE(0xc00c, 0);
    rr.writeUInt16BE(1, 2);
    rr.writeUInt16BE(1, 4);
    rr.writeUInt32BE(60, 6);
    rr.writeUInt16BE(4, 10);
    Buffer.from(address.split('.').map(Number)).copy(rr, 12);
    parts.push(rr);
  }
  return { reply: Buffer.concat(parts), name };
}

/** The simulated internet's servers (runs inside the internet namespace). */
async function serveInternet(): Promise<void> {
  const emit = (e: SimEvent) => process.stdout.write(`${JSON.stringify(e)}\n`);
  const listening: Promise<void>[] = [];
  const web = (host: string, port: number, body: string) => {
    const server = createHttpServer((req, res) => {
      let bytes = 0;
      req.on('data', (c: Buffer) => (bytes += c.length));
      req.on('end', () => {
        emit({
          type: 'http',
          from: req.socket.remoteAddress ?? '',
          to: `${host}:${port}`,
          path: req.url ?? '',
          bytes,
        });
        res.end(req.method === 'POST' ? `received ${bytes}` : body);
      });
    });
    listening.push(new Promise((r) => server.listen(port, host, () => r())));
  };
  web(SIM.web, 80, 'hello from the internet');
  web(SIM.web, 8080, 'web port 8080');
  web(SIM.web2, 80, 'hello from web2');
  web(SIM.internal, 80, 'internal secret');
  web(SIM.metadata, 80, 'metadata secret');
  web(SIM.gateway, 80, 'the uplink gateway');
  web(SIM.wireServer, 80, 'wireserver secret');
  web(SIM.operatorBlocked, 80, 'operator-blocked secret');

  const sink = createSocket('udp4');
  sink.on('message', (m, r) => emit({ type: 'udp', from: r.address, data: m.toString() }));
  listening.push(new Promise((r) => sink.bind(9000, SIM.web, () => r())));

  const dns = createSocket('udp4');
  dns.on('message', (m, r) => {
    const a = dnsAnswer(m);
    if (!a) return;
    emit({ type: 'dns', from: r.address, name: a.name });
    dns.send(a.reply, r.port, r.address);
  });
  listening.push(new Promise((r) => dns.bind(53, SIM.dns, () => r())));
  const dnsTcp = createTcpServer((c) => {
    let buf = Buffer.alloc(0);
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const a = dnsAnswer(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        buf = buf.subarray(2 + buf.readUInt16BE(0));
        if (!a) continue;
        emit({ type: 'dns', from: c.remoteAddress ?? '', name: a.name });
        const len = Buffer.alloc(2);
        len.writeUInt16BE(a.reply.length);
        c.write(Buffer.concat([len, a.reply]));
      }
    });
    c.on('error', () => {});
  });
  listening.push(new Promise((r) => dnsTcp.listen(53, SIM.dns, () => r())));
  await Promise.all(listening);
  process.stdout.write('ready\n');
}

if (import.meta.main && process.argv[2] === 'internet') {
  serveInternet().catch((e) => {
    process.stderr.write(`${e?.stack ?? e}\n`);
    process.exit(1);
  });
}
