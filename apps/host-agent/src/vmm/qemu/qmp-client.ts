import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { WarrenError } from '@warren/protocol';

/** The longest QMP line accepted; QEMU runs next to the guest, so it is not fully trusted. */
const MAX_LINE = 1024 * 1024;

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

/**
 * A minimal QMP client: one unix socket, JSON lines, commands matched to replies by id,
 * asynchronous events emitted as `event`. Emits `close` when QEMU goes away.
 */
/** QEMU answered a command with an error (the command did not happen), as opposed to a lost connection. */
export class QmpError extends WarrenError {
  constructor(desc: string) {
    super('INTERNAL', `QMP error: ${desc}`);
  }
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  readonly #socket: Socket;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #nextId = 1;
  #buffer = '';
  #closed = false;

  private constructor(socket: Socket) {
    super();
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      this.#closed = true;
      for (const p of this.#pending.values()) p.reject(new WarrenError('VM_EXITED', 'QMP connection closed'));
      this.#pending.clear();
      this.emit('close');
    });
  }

  static connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      let client: QmpClient | undefined;
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new WarrenError('VM_BOOT_FAILED', `QMP at ${path} did not greet within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(new WarrenError('VM_EXITED', `cannot connect to QMP at ${path}: ${e.message}`));
      });
      socket.once('connect', () => {
        client = new QmpClient(socket);
        // The greeting arrives first; capabilities negotiation moves QMP to command mode.
        client
          .execute('qmp_capabilities')
          .then(() => {
            clearTimeout(timer);
            resolve(client!);
          })
          .catch((e) => {
            clearTimeout(timer);
            reject(e);
          });
      });
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closed) return Promise.reject(new WarrenError('VM_EXITED', 'QMP connection is closed'));
    const id = this.#nextId++;
    const msg = JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id });
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#socket.write(`${msg}\n`);
    });
  }

  close(): void {
    this.#socket.destroy();
  }

  #onData(chunk: string) {
    this.#buffer += chunk;
    if (this.#buffer.length > MAX_LINE && !this.#buffer.includes('\n')) {
      this.#socket.destroy();
      return;
    }
    let nl = this.#buffer.indexOf('\n');
    while (nl >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      nl = this.#buffer.indexOf('\n');
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (typeof msg.event === 'string') {
        this.emit('event', { event: msg.event, data: msg.data as Record<string, unknown> | undefined });
      } else if (typeof msg.id === 'number' && this.#pending.has(msg.id)) {
        const p = this.#pending.get(msg.id)!;
        this.#pending.delete(msg.id);
        if (msg.error) {
          const err = msg.error as { desc?: string };
          p.reject(new QmpError(String(err.desc ?? 'unknown')));
        } else p.resolve(msg.return);
      }
    }
  }
}
