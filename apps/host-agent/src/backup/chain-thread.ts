/**
 * A disk chain (raw base under qcow2 layers) read in a worker thread: the qcow2 reader
 * (disk-changes/qcow2.ts) reads with readSync, and a backup reads whole volumes, so doing that
 * on the agent's event loop would stall its API and heartbeats. Every file is opened when the
 * chain is, so the layers stay readable even if the VM's record lets go of them meanwhile.
 */
import { Worker } from 'node:worker_threads';
import { WarrenError } from '@warren/protocol';
import type { DiskChain } from '../disk-changes/qcow2.ts';

type ChainOp =
  | { op: 'open'; chain: DiskChain }
  | { op: 'allocated'; fromLayer: number; chunkSize: number }
  | { op: 'read'; offset: number; length: number }
  | { op: 'close' };
export type ChainRequest = ChainOp & { id: number };

export interface ChainResponse {
  id: number;
  result?: { size: number; layers: number } | { chunks: number[] | null } | { bytes: Uint8Array } | object;
  error?: string;
}

const WORKER = new URL('./chain-thread-worker.ts', import.meta.url);
/** The worker's heap: L2 caches of a few layers, a chunk in flight, a set of chunk indexes. */
const WORKER_HEAP_MIB = 256;

export class ChainThread {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #next = 0;
  #dead: Error | undefined;
  /** The disk's size as the guest sees it, known once open. */
  size = 0;
  /** Its number of qcow2 layers above the raw base. */
  layers = 0;

  private constructor() {
    this.#worker = new Worker(WORKER, { resourceLimits: { maxOldGenerationSizeMb: WORKER_HEAP_MIB } });
    this.#worker.on('message', (res: ChainResponse) => {
      const p = this.#pending.get(res.id);
      if (!p) return;
      this.#pending.delete(res.id);
      if (res.error !== undefined)
        p.reject(new WarrenError('INTERNAL', `reading the VM's disk: ${res.error}`));
      else p.resolve(res.result);
    });
    const fail = (e: Error) => {
      this.#dead ??= e;
      for (const p of this.#pending.values()) p.reject(e);
      this.#pending.clear();
    };
    this.#worker.on('error', fail);
    this.#worker.on('exit', (code) =>
      fail(new WarrenError('INTERNAL', `the disk reader thread exited (${code})`)),
    );
  }

  /** Opens every file of `chain` in a new thread. */
  static async open(chain: DiskChain): Promise<ChainThread> {
    const t = new ChainThread();
    try {
      const r = (await t.#call({ op: 'open', chain })) as { size: number; layers: number };
      t.size = r.size;
      t.layers = r.layers;
      return t;
    } catch (e) {
      await t.close();
      throw e;
    }
  }

  /**
   * Indexes of the `chunkSize` chunks that qcow2 layers `fromLayer` and up hold clusters of
   * (sorted), or null when the layers have too many allocated runs to list (count all as changed).
   */
  async allocatedChunks(fromLayer: number, chunkSize: number): Promise<number[] | null> {
    return ((await this.#call({ op: 'allocated', fromLayer, chunkSize })) as { chunks: number[] | null })
      .chunks;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const { bytes } = (await this.#call({ op: 'read', offset, length })) as { bytes: Uint8Array };
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  async close(): Promise<void> {
    await this.#worker.terminate();
  }

  #call(req: ChainOp): Promise<unknown> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...req, id });
    });
  }
}
