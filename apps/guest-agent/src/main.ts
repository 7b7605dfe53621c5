/**
 * The in-guest agent. Started by the guest's init at boot, it serves the host over the
 * control channel (a virtio-serial port) and is restarted by init if it dies.
 *
 * `--listen PATH` serves a unix socket instead: that is how the agent is tested on a
 * development machine without a VM. In that mode a shutdown request only ends the agent.
 */
import { execFile } from 'node:child_process';
import { closeSync, createReadStream, openSync, readdirSync, readFileSync, rmSync, write } from 'node:fs';
import { createServer } from 'node:net';
import { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { AGENT_PORT_NAME } from '@warren/protocol';
import { createAgentServer, serveChannel } from './server.ts';

const POWER_COMMAND = process.env.WARREN_POWER_COMMAND ?? '/usr/lib/warren/busybox';

function log(message: string) {
  process.stderr.write(`warren-guest-agent: ${message}\n`);
}

/** Finds /dev/vportNpM whose virtio-serial name is ours (no udev in the guest). */
function findPort(): string | undefined {
  const base = '/sys/class/virtio-ports';
  let names: string[] = [];
  try {
    names = readdirSync(base);
  } catch {
    return undefined;
  }
  for (const dev of names) {
    try {
      if (readFileSync(`${base}/${dev}/name`, 'utf8').trim() === AGENT_PORT_NAME) return `/dev/${dev}`;
    } catch {
      // Port without a name: not ours.
    }
  }
  return undefined;
}

/**
 * A virtio-serial port is a character device, which libuv treats as a file: reads go
 * through the thread pool. A read returns 0 (end of stream) whenever the host side is
 * not connected, so each host connection is one open/serve/close cycle. After that end,
 * writes are dropped: bytes of a finished session must never reach the next host
 * connection, which expects a fresh HTTP/2 preface.
 */
class PortStream extends Duplex {
  readonly #fd: number;
  readonly #reader: ReturnType<typeof createReadStream>;
  #ended = false;

  constructor(path: string) {
    super();
    this.#fd = openSync(path, 'r+');
    this.#reader = createReadStream('', { fd: this.#fd, autoClose: false, highWaterMark: 256 * 1024 });
    this.#reader.on('data', (chunk) => {
      if (!this.push(chunk)) this.#reader.pause();
    });
    this.#reader.on('end', () => {
      this.#ended = true;
      this.push(null);
    });
    this.#reader.on('error', (e) => this.destroy(e));
  }

  override _read(): void {
    this.#reader.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.#ended) {
      callback();
      return;
    }
    const writeFrom = (offset: number) => {
      write(this.#fd, chunk, offset, chunk.length - offset, null, (err, n) => {
        if (err) callback(err);
        else if (offset + n < chunk.length) writeFrom(offset + n);
        else callback();
      });
    };
    writeFrom(0);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#ended = true;
    this.#reader.destroy();
    // Closed on the next turn, after the reader let go of the descriptor.
    setImmediate(() => {
      try {
        closeSync(this.#fd);
      } catch {
        // Already closed.
      }
      callback(error);
    });
  }
}

async function servePort(server: ReturnType<typeof createAgentServer>) {
  for (;;) {
    const port = findPort();
    if (!port) {
      await sleep(200);
      continue;
    }
    const started = Date.now();
    try {
      await serveChannel(server, new PortStream(port));
    } catch (e) {
      log(`channel error: ${(e as Error).message}`);
    }
    // Host not connected: reads end at once; wait a little before trying again.
    if (Date.now() - started < 100) await sleep(50);
  }
}

function main() {
  const listenIndex = process.argv.indexOf('--listen');
  const listenPath = listenIndex > 0 ? process.argv[listenIndex + 1] : undefined;
  const server = createAgentServer({
    onShutdown(action) {
      if (listenPath) {
        log('shutdown requested in --listen mode: exiting');
        process.exit(0);
      }
      log(`shutdown requested: ${action}`);
      execFile(POWER_COMMAND, [action], () => {});
    },
  });
  if (listenPath) {
    rmSync(listenPath, { force: true });
    const net = createServer((socket) => {
      void serveChannel(server, socket);
    });
    net.listen(listenPath, () => log(`listening on ${listenPath}`));
    return;
  }
  log(`starting, looking for port ${AGENT_PORT_NAME}`);
  void servePort(server);
}

main();
