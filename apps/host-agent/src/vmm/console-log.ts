import { type FileHandle, open, rename } from 'node:fs/promises';
import type { Readable } from 'node:stream';

/**
 * Writes a VM's serial console to `path`, never more than `maxBytes` in it: when full it becomes
 * `path.1` (replacing the older one) and a new file starts, so the two hold at most 2 x maxBytes.
 * It reads only as fast as it writes, so a guest flooding its console is slowed by its own
 * serial port rather than by the host's disk or memory.
 */
export async function writeCappedLog(source: Readable, path: string, maxBytes: number): Promise<void> {
  let file: FileHandle = await open(path, 'a', 0o600);
  let size = (await file.stat()).size;
  try {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      let rest = chunk;
      while (rest.length > 0) {
        if (size >= maxBytes) {
          await file.close();
          await rename(path, `${path}.1`);
          file = await open(path, 'a', 0o600);
          size = 0;
        }
        const n = Math.min(rest.length, maxBytes - size);
        await file.write(rest, 0, n);
        size += n;
        rest = rest.subarray(n);
      }
    }
  } finally {
    await file.close().catch(() => {});
  }
}
