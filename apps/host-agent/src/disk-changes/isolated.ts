/**
 * The host agent's way to read guest-written filesystems (a VM's changed files, the digests of
 * a restored volume's files): the parse runs in a child process (worker.ts) with a capped heap
 * and a deadline, as an unprivileged user on descriptors the agent opened, so a crafted disk can
 * cost the agent at most that process, never its own memory, its event loop or root.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { basename, join, resolve as resolvePath } from 'node:path';
import { FileChange, WarrenError } from '@warren/protocol';
import { daemonLog } from '@warren/telemetry';
import { z } from 'zod';
import type { ChangedFiles, ChangedFilesOptions } from './changes.ts';
import type { FileDigest, FileDigestsOptions } from './file-digests.ts';
import type { DiskChain } from './qcow2.ts';

/** What the worker reads from its stdin, as one JSON line. */
export type WorkerJob =
  | { op: 'changes'; old: DiskChain; now: DiskChain; options: ChangedFilesOptions }
  | { op: 'digests'; chain: DiskChain; options: FileDigestsOptions };

const WORKER = join(import.meta.dirname, 'worker.ts');
/**
 * The worker's V8 heap, in MiB. Its other memory is bounded by its own caches (L2 tables, inode
 * and tree blocks: tens of MiB); the heap holds directory listings (at most MAX_DIR_ENTRIES
 * names each), the visited-directory sets and the changes kept.
 */
const WORKER_HEAP_MIB = 512;
/** The worker's answer is a change list of at most `max` paths; anything much longer is not one. */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;
/** How much longer than the caller's deadline the worker's own lasts (it is killed at the caller's). */
const WORKER_GRACE_MS = 5_000;
/** The tail of the worker's stderr kept for the agent's log when it dies without an answer. */
const STDERR_TAIL_CHARS = 4096;

const ChangesAnswer = z.object({ changes: z.array(FileChange), truncated: z.boolean() });
// The error first: an object without `result` would also pass as one with `result: undefined`.
const Answer = z.union([
  z.object({ error: z.object({ message: z.string() }) }),
  z.object({ result: z.unknown() }),
]);
const DigestsAnswer = z.array(
  z.object({ path: z.string(), size: z.number().int().min(0), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
);

/** Workers at a time in this process (each may take WORKER_HEAP_MIB and a core); later calls wait their turn. */
const MAX_WORKERS = 2;
const workers = { running: 0, waiting: [] as Array<() => void> };

/** How many workers run and how many calls wait for one (for tests and diagnostics). */
export function diskChangesWorkers(): { running: number; waiting: number } {
  return { running: workers.running, waiting: workers.waiting.length };
}

/**
 * changedFiles (changes.ts) in a child process, at most MAX_WORKERS at a time, given up after
 * `timeoutMs` in all (waiting for a turn included) and killed then. Throws a WarrenError
 * DISK_CHANGES_FAILED when the disks cannot be read (a format refused, a filesystem corrupt or
 * too large to walk in time), with the reason in its message.
 */
export async function changedFilesIsolated(
  old: DiskChain,
  now: DiskChain,
  options: Omit<ChangedFilesOptions, 'timeoutMs'> & { timeoutMs: number },
): Promise<ChangedFiles> {
  const { timeoutMs, ...rest } = options;
  const result = ChangesAnswer.safeParse(
    await queued(CHANGES, timeoutMs, (leftMs) =>
      runWorker(CHANGES, [old, now], timeoutMs, leftMs, ([o, n], workerMs) => ({
        op: 'changes',
        old: o!,
        now: n!,
        options: { ...rest, timeoutMs: workerMs },
      })),
    ),
  );
  if (!result.success || result.data.changes.length > rest.max)
    throw new WarrenError('DISK_CHANGES_FAILED', 'the changed-files worker sent more than a change list');
  return result.data;
}

/**
 * fileDigests (file-digests.ts) in a child process, like changedFilesIsolated: the same
 * workers, the same bounds. Throws a WarrenError DISK_CHANGES_FAILED when the filesystem cannot
 * be read, with the reason in its message.
 */
export async function fileDigestsIsolated(
  chain: DiskChain,
  options: Omit<FileDigestsOptions, 'timeoutMs'> & { timeoutMs: number },
): Promise<FileDigest[]> {
  const { timeoutMs, ...rest } = options;
  const result = DigestsAnswer.safeParse(
    await queued(DIGESTS, timeoutMs, (leftMs) =>
      runWorker(DIGESTS, [chain], timeoutMs, leftMs, ([c], workerMs) => ({
        op: 'digests',
        chain: c!,
        options: { ...rest, timeoutMs: workerMs },
      })),
    ),
  );
  if (!result.success || result.data.length > rest.max)
    throw new WarrenError('DISK_CHANGES_FAILED', 'the file-digests worker sent more than a list of digests');
  return result.data;
}

/** What a job is called in its errors. */
interface Work {
  /** "listing the changed files" */
  doing: string;
  /** "the changed-files worker" */
  worker: string;
  /** "cannot list the changed files" */
  failed: string;
}
const CHANGES: Work = {
  doing: 'listing the changed files',
  worker: 'the changed-files worker',
  failed: 'cannot list the changed files',
};
const DIGESTS: Work = {
  doing: "reading the files' digests",
  worker: 'the file-digests worker',
  failed: "cannot read the files' digests",
};

/** Runs `run` when a worker is free, at most MAX_WORKERS at a time, given up after `timeoutMs` in all. */
function queued<T>(work: Work, timeoutMs: number, run: (leftMs: number) => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const start = () => {
      clearTimeout(timer);
      workers.running++;
      run(Math.max(1, deadline - Date.now()))
        .then(resolve, reject)
        .finally(() => {
          workers.running--;
          workers.waiting.shift()?.();
        });
    };
    if (workers.running < MAX_WORKERS) return start();
    workers.waiting.push(start);
    timer = setTimeout(() => {
      workers.waiting.splice(workers.waiting.indexOf(start), 1);
      reject(
        new WarrenError(
          'DISK_CHANGES_FAILED',
          `${work.doing} waited more than ${timeoutMs} ms for other disk reads to finish`,
        ),
      );
    }, timeoutMs);
  });
}

/** Runs one job in a worker and answers its `result`, unchecked (the caller checks its shape). */
function runWorker(
  work: Work,
  chains: DiskChain[],
  timeoutMs: number,
  leftMs: number,
  makeJob: (inherited: DiskChain[], workerTimeoutMs: number) => WorkerJob,
): Promise<unknown> {
  const fail = (message: string) => new WarrenError('DISK_CHANGES_FAILED', message);
  // The agent opens the files and the worker inherits them (fd 3 onwards): the worker drops to
  // an unprivileged uid before it reads a byte, and could not open the VM's 0600 files itself.
  const files = new Map<string, { fd: number; name: string }>();
  const inherit = (chain: DiskChain): DiskChain => {
    const ref = (path: string) => {
      const key = resolvePath(path);
      let f = files.get(key);
      if (!f) {
        try {
          f = { fd: openSync(key, 'r'), name: basename(key) };
        } catch (e) {
          // Named by base name: the message may reach the tenant, the host's layout may not.
          throw new Error(`${basename(key)}: ${(e as NodeJS.ErrnoException).code ?? 'cannot open'}`);
        }
        files.set(key, f);
      }
      return `fd:${3 + [...files.keys()].indexOf(key)}`;
    };
    return { base: ref(chain.base), baseFormat: chain.baseFormat, layers: chain.layers.map(ref) };
  };
  let job: WorkerJob;
  try {
    // The worker also stops itself, a little after this process would kill it: it ends even if
    // this process dies first.
    job = makeJob(chains.map(inherit), leftMs + WORKER_GRACE_MS);
  } catch (e) {
    for (const f of files.values()) closeSync(f.fd);
    return Promise.reject(fail(`cannot open the VM's disks: ${(e as Error).message}`));
  }
  const fds = [...files.values()];
  // Error messages name the files by the worker's descriptors; the caller knows them by name.
  const named = (message: string) => fds.reduce((m, f, i) => m.replaceAll(`fd:${3 + i}`, f.name), message);
  return new Promise((resolve, reject) => {
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(process.execPath, [`--max-old-space-size=${WORKER_HEAP_MIB}`, WORKER], {
        stdio: ['pipe', 'pipe', 'pipe', ...fds.map((f) => f.fd)],
      });
    } catch (e) {
      return reject(fail(`cannot start ${work.worker}: ${(e as Error).message}`));
    } finally {
      // The worker has its own copies now.
      for (const f of fds) closeSync(f.fd);
    }
    let out = '';
    let err = '';
    let failure: WarrenError | undefined;
    const timer = setTimeout(() => {
      failure = fail(`${work.doing} took more than ${timeoutMs} ms and was stopped`);
      child.kill('SIGKILL');
    }, leftMs);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      out += chunk;
      if (out.length > MAX_ANSWER_BYTES && !failure) {
        failure = fail(`${work.worker} sent more than an answer`);
        child.kill('SIGKILL');
      }
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      err = (err + chunk).slice(-STDERR_TAIL_CHARS);
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(fail(`cannot start ${work.worker}: ${e.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (failure) return reject(failure);
      let parsed: z.infer<typeof Answer> | undefined;
      try {
        parsed = Answer.parse(JSON.parse(out));
      } catch {
        // Its stderr (an out-of-memory report, a stack with the agent's paths) goes to the
        // agent's log, not to the caller.
        if (err) daemonLog('warn', `disk changes worker: ${err.trim()}`);
        const why = signal ?? `exit ${code}`;
        return reject(fail(`${work.worker} ended (${why}) without an answer (out of memory?)`));
      }
      if ('error' in parsed) return reject(fail(`${work.failed}: ${named(parsed.error.message)}`));
      resolve(parsed.result);
    });
    // A worker that died before reading its job closes the pipe; the close above says why.
    child.stdin!.on('error', () => {});
    // Stdin stays open while it works: its end tells the worker nobody waits any more.
    child.stdin!.write(`${JSON.stringify(job)}\n`);
  });
}
