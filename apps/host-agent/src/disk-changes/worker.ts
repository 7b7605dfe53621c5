/**
 * Compares two disk chains in a process of its own, for changedFilesIsolated (isolated.ts):
 * reads `{old, now, options}` as one JSON line on stdin, writes `{"result": ChangedFiles}` or
 * `{"error": {"message"}}` as one line on stdout, and exits. The bytes it parses are the guest's;
 * the parent caps this process's heap and time and kills it when either runs out.
 */
import { createInterface } from 'node:readline';
import { changedFiles } from './changes.ts';
import type { ChangedFilesJob } from './isolated.ts';

function answer(message: unknown, code: number): never {
  // Writes to a pipe are synchronous on Linux: nothing is lost by the exit that follows.
  process.stdout.write(`${JSON.stringify(message)}\n`);
  process.exit(code);
}

if (import.meta.main) {
  const lines = createInterface({ input: process.stdin });
  lines.once('line', (line) => {
    try {
      const job = JSON.parse(line) as ChangedFilesJob;
      answer({ result: changedFiles(job.old, job.now, job.options) }, 0);
    } catch (e) {
      answer({ error: { message: e instanceof Error ? e.message : String(e) } }, 1);
    }
  });
  // Stdin's end before a job means nobody waits for an answer.
  lines.on('close', () => process.exit(1));
}
