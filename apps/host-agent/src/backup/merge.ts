/**
 * Merging a stopped VM's frozen layers into a raw bottom layer without QEMU: the layers are read
 * with the hardened qcow2 reader (in its thread) and their chunks written over the base, so no
 * qemu-img running as root ever parses metadata a guest's QEMU wrote.
 */
import { open, stat } from 'node:fs/promises';
import { WarrenError } from '@warren/protocol';
import { ChainThread } from './chain-thread.ts';

/** What is copied at a time: the chunks any merged layer touches, read through the chain. */
const MERGE_CHUNK_BYTES = 1024 * 1024;

/**
 * Writes what the chain `base` + `layers` reads as into `base`, where any of the layers holds a
 * cluster; afterwards `base` alone reads as the chain did. Safe to repeat after a crash midway:
 * it writes only bytes the chain already reads as.
 */
export async function mergeIntoRawBase(base: string, layers: string[]): Promise<void> {
  const thread = await ChainThread.open({ base, baseFormat: 'raw', layers });
  try {
    const size = (await stat(base)).size;
    if (thread.size !== size)
      throw new WarrenError(
        'INTERNAL',
        `a disk's top layer claims ${thread.size} bytes where its base has ${size}`,
      );
    const chunks =
      (await thread.allocatedChunks(0, MERGE_CHUNK_BYTES)) ??
      Array.from({ length: Math.ceil(size / MERGE_CHUNK_BYTES) }, (_, i) => i);
    const file = await open(base, 'r+');
    try {
      for (const i of chunks) {
        const offset = i * MERGE_CHUNK_BYTES;
        const bytes = await thread.read(offset, Math.min(MERGE_CHUNK_BYTES, size - offset));
        await file.write(bytes, 0, bytes.length, offset);
      }
      await file.sync();
    } finally {
      await file.close();
    }
  } finally {
    await thread.close();
  }
}
