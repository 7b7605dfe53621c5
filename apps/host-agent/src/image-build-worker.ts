/**
 * Builds one image in a process of its own, for the host agent (images.ts): reads an
 * ImageBuildJob as one JSON line on stdin, writes NDJSON on stdout, `{"progress": {...}}` per
 * step, then `{"result": {...}}` or `{"error": {...}}`, and exits.
 *
 * The guest's root filesystem takes the modes of the files the build creates, and of those that
 * the tools it runs create (debootstrap, dpkg, mkfs.ext4 -d, cpio); all of them apply the umask.
 * The agent runs under umask 077, which would leave /usr and everything else in the guest
 * readable by root only, so the build runs here, under 022, and the agent keeps its own.
 */
import { createInterface } from 'node:readline';
import { buildImage, ImageStore } from '@warren/images';
import { WarrenError } from '@warren/protocol';
import type { ImageBuildJob } from './images.ts';

/** Group and others may read and run what the guest's root filesystem holds; only root writes. */
const IMAGE_BUILD_UMASK = 0o022;

function send(message: unknown): void {
  // Writes to a pipe are synchronous on Linux: nothing is lost by the exit that follows.
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function build(line: string): Promise<void> {
  try {
    const job = JSON.parse(line) as ImageBuildJob;
    const store = new ImageStore(job.imagesDir);
    const result = await buildImage(store, { ...job.options, onProgress: (progress) => send({ progress }) });
    send({ result });
    process.exit(0);
  } catch (e) {
    if (!(e instanceof WarrenError)) process.stderr.write(`${(e as Error)?.stack ?? e}\n`);
    const error = e instanceof WarrenError ? e : new WarrenError('IMAGE_BUILD_FAILED', String(e));
    send(error.toBody());
    process.exit(1);
  }
}

if (import.meta.main) {
  // First, before the build touches a file (loading the modules above creates none).
  process.umask(IMAGE_BUILD_UMASK);
  let started = false;
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    if (started) return;
    started = true;
    void build(line);
  });
  // The agent keeps stdin open until the answer: its end means nobody waits for this build.
  lines.on('close', () => process.exit(1));
}
