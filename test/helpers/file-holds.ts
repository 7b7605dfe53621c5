import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** True if any file under `dir` contains `needle` (streamed: memory files are large). */
export async function anyFileHolds(dir: string, needle: Buffer): Promise<string | undefined> {
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    if (await fileHolds(path, needle)) return path;
  }
  return undefined;
}

export function fileHolds(path: string, needle: Buffer): Promise<boolean> {
  return new Promise((resolve, reject) => {
    let tail = Buffer.alloc(0);
    const s = createReadStream(path, { highWaterMark: 4 * 1024 * 1024 });
    s.on('data', (chunk) => {
      const window = Buffer.concat([tail, chunk as Buffer]);
      if (window.includes(needle)) {
        s.destroy();
        resolve(true);
      }
      tail = window.subarray(Math.max(0, window.length - needle.length));
    });
    s.on('error', reject);
    s.on('close', () => resolve(false));
  });
}
