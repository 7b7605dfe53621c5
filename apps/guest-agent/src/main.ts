/**
 * The in-guest agent. Started by the guest's init at boot, it serves the host over the
 * control channel (a virtio-serial port) and is restarted by init if it dies.
 *
 * `--listen PATH` serves a unix socket instead: that is how the agent is tested on a
 * development machine without a VM. In that mode a shutdown request only ends the agent.
 */
import { execFile } from 'node:child_process';
import { closeSync, openSync, read, readdirSync, readFileSync, rmSync, write } from 'node:fs';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { AGENT_PORT_NAME } from '@warren/protocol/guest';
import { VolumeFreeze } from './freeze.ts';
import { type PortDevice, servePort } from './port.ts';
import { prepareForRestores } from './restore.ts';
import { createAgentServer, serveChannel } from './server.ts';

const POWER_COMMAND = process.env.WARREN_POWER_COMMAND ?? '/usr/lib/warren/busybox';

function log(message: string) {
  process.stderr.write(`warren-guest-agent: ${message}\n`);
}

/**
 * Logs a boot milestone with the guest's uptime in seconds, as the init scripts do
 * (`warren-boot: NAME UPTIME`): bench/boot-trace.ts reads them from the console log.
 */
function milestone(name: string, atMs = performance.now()): void {
  let uptime: number;
  try {
    uptime = Number(readFileSync('/proc/uptime', 'latin1').split(' ')[0]);
  } catch {
    return; // Not Linux (--listen on a development machine): nothing to compare with.
  }
  // performance.now() counts from the process start; `atMs` may be a point before now.
  const at = uptime - (performance.now() - atMs) / 1000;
  process.stderr.write(`warren-boot: ${name} ${at.toFixed(2)}\n`);
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
 * A virtio-serial port is a character device, which libuv treats as a file: reads and writes
 * go through the thread pool.
 */
function openPort(path: string): PortDevice & { close(): void } {
  const fd = openSync(path, 'r+');
  return {
    read: (buffer) =>
      new Promise((resolve, reject) =>
        read(fd, buffer, 0, buffer.length, null, (err, n) => (err ? reject(err) : resolve(n))),
      ),
    write: (data) =>
      new Promise((resolve, reject) => {
        const from = (offset: number) =>
          write(fd, data, offset, data.length - offset, null, (err, n) => {
            if (err) reject(err);
            else if (offset + n < data.length) from(offset + n);
            else resolve();
          });
        from(0);
      }),
    close: () => closeSync(fd),
  };
}

async function servePorts(server: ReturnType<typeof createAgentServer>) {
  for (;;) {
    const path = findPort();
    if (!path) {
      await sleep(200);
      continue;
    }
    try {
      const port = openPort(path);
      milestone('agent-port-open');
      try {
        await servePort(server, port);
      } finally {
        port.close();
      }
    } catch (e) {
      log(`channel error: ${(e as Error).message}`);
      await sleep(200);
    }
  }
}

function main() {
  const loadedAt = performance.now();
  prepareForRestores();
  const volume = new VolumeFreeze();
  void volume.thawLeftover();
  const listenIndex = process.argv.indexOf('--listen');
  const listenPath = listenIndex > 0 ? process.argv[listenIndex + 1] : undefined;
  const server = createAgentServer(
    {
      onShutdown(action) {
        if (listenPath) {
          log('shutdown requested in --listen mode: exiting');
          process.exit(0);
        }
        log(`shutdown requested: ${action}`);
        execFile(POWER_COMMAND, [action], () => {});
      },
      onRestart() {
        // init (`respawn` in inittab) starts a fresh agent; the kernel (init_on_free=1) zeroes
        // this process's memory as it is freed, credentials it held included.
        log('restart requested after a credentials wipe: exiting');
        process.exit(0);
      },
    },
    volume,
  );
  if (listenPath) {
    rmSync(listenPath, { force: true });
    const net = createServer((socket) => {
      void serveChannel(server, socket);
    });
    net.listen(listenPath, () => log(`listening on ${listenPath}`));
    return;
  }
  log(`starting, looking for port ${AGENT_PORT_NAME}`);
  milestone('node-start', 0);
  milestone('node-bootstrapped', performance.nodeTiming.bootstrapComplete);
  milestone('agent-loaded', loadedAt);
  server.once('session', () => milestone('agent-first-session'));
  server.once('stream', () => milestone('agent-first-request'));
  void servePorts(server);
}

main();
