/**
 * Reads guest filesystems in a process of its own, for isolated.ts: reads one WorkerJob as a
 * JSON line on stdin (compare two disk chains, or digest a chain's files; the chains name files
 * it inherited open, `fd:3` onwards), writes `{"result": ...}` or `{"error": {"message"}}` as
 * one line on stdout, and exits. The bytes it parses are the guest's: the parent caps this process's
 * heap and time and kills it when either runs out, and it gives up root before reading them.
 */
import { createInterface } from 'node:readline';
import { changedFiles } from './changes.ts';
import { fileDigests } from './file-digests.ts';
import type { WorkerJob } from './isolated.ts';

function answer(message: unknown, code: number): never {
  // Writes to a pipe are synchronous on Linux: nothing is lost by the exit that follows.
  process.stdout.write(`${JSON.stringify(message)}\n`);
  process.exit(code);
}

/**
 * Who the worker runs as once its code is loaded: nobody (65534 on Debian and most systems).
 * It reads the disks through descriptors the agent opened for it, so it needs no access of its
 * own; if the parse were ever turned against it, it holds no root.
 */
const WORKER_UID = 65534;

if (import.meta.main) {
  if (process.getuid?.() === 0) {
    process.setgroups!([]);
    process.setgid!(WORKER_UID);
    process.setuid!(WORKER_UID);
  }
  const lines = createInterface({ input: process.stdin });
  lines.once('line', (line) => {
    try {
      const job = JSON.parse(line) as WorkerJob;
      const result =
        job.op === 'digests'
          ? fileDigests(job.chain, job.options)
          : changedFiles(job.old, job.now, job.options);
      answer({ result }, 0);
    } catch (e) {
      answer({ error: { message: e instanceof Error ? e.message : String(e) } }, 1);
    }
  });
  // Stdin's end before a job means nobody waits for an answer.
  lines.on('close', () => process.exit(1));
}
