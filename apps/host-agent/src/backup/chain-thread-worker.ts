/**
 * The worker thread side of ChainThread (chain-thread.ts): holds one disk chain open with the
 * hardened qcow2 reader and answers its reads, which are synchronous, away from the agent's
 * event loop. One message at a time, in order.
 */
import { parentPort } from 'node:worker_threads';
import { type Chain, openChain } from '../disk-changes/qcow2.ts';
import type { ChainRequest, ChainResponse } from './chain-thread.ts';

/** Runs of allocated clusters one layer may report before the walk gives up (then every chunk counts as changed). */
const MAX_ALLOCATED_RUNS = 1 << 22;

let chain: Chain | undefined;

/** Indexes of the `chunkSize` chunks any of `layers` holds a cluster of (data or zero), or null when there are too many runs to say. */
function allocatedChunks(c: Chain, from: number, chunkSize: number): number[] | null {
  const chunks = new Set<number>();
  for (const layer of c.layers.slice(from)) {
    const complete = layer.allocated((start, end) => {
      for (let i = Math.floor(start / chunkSize); i <= Math.floor((end - 1) / chunkSize); i++) chunks.add(i);
    }, MAX_ALLOCATED_RUNS);
    if (!complete) return null;
  }
  return [...chunks].sort((a, b) => a - b);
}

function handle(req: ChainRequest): ChainResponse['result'] {
  switch (req.op) {
    case 'open':
      chain?.close();
      chain = openChain(req.chain);
      return { size: chain.size, layers: chain.layers.length };
    case 'allocated':
      if (!chain) throw new Error('no chain open');
      return { chunks: allocatedChunks(chain, req.fromLayer, req.chunkSize) };
    case 'read': {
      if (!chain) throw new Error('no chain open');
      return { bytes: chain.read(req.offset, req.length) };
    }
    case 'close':
      chain?.close();
      chain = undefined;
      return {};
  }
}

parentPort!.on('message', (req: ChainRequest) => {
  let res: ChainResponse;
  try {
    res = { id: req.id, result: handle(req) };
  } catch (e) {
    res = { id: req.id, error: e instanceof Error ? e.message : String(e) };
  }
  const bytes = res.result && 'bytes' in res.result ? res.result.bytes : undefined;
  // A read's buffer is its own (one chunk, allocated for it) unless it is small: hand it over, not copy it.
  const own = bytes && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
  parentPort!.postMessage(res, own ? [bytes.buffer as ArrayBuffer] : []);
});
