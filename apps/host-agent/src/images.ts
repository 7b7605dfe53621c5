import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { BuildOptions, BuildProgress, BuildResult, ImageStore } from '@warren/images';
import { type Profile, WarrenError } from '@warren/protocol';
import { daemonLog } from '@warren/telemetry';
import type { HostAgentConfig } from './config.ts';

export interface HostImageBuild {
  profile: Profile;
  force: boolean;
  onProgress?: (p: BuildProgress) => void;
}

/** What the build worker (image-build-worker.ts) reads from its stdin, as one JSON line. */
export interface ImageBuildJob {
  imagesDir: string;
  options: Omit<BuildOptions, 'onProgress'>;
}

const WORKER = join(import.meta.dirname, 'image-build-worker.ts');
/** Lines of the worker's stderr kept for the error when it dies without an answer. */
const STDERR_TAIL_LINES = 20;

let queue: Promise<unknown> = Promise.resolve();

/**
 * Builds an image of `profile` into this host's store (a cache hit when its recipe was built),
 * with this host's build settings. Builds run one at a time: a second caller waits for the
 * first and then, for the same recipe, finds it cached instead of building it again.
 *
 * The build runs in a child process under umask 022 (image-build-worker.ts): the guest's root
 * filesystem takes the modes of what the build creates, and the agent's own umask (077, so
 * tenant files stay private) would make /usr and everything else in the guest root's alone.
 */
export function buildHostImage(
  config: HostAgentConfig,
  store: ImageStore,
  build: HostImageBuild,
): Promise<BuildResult> {
  const job: ImageBuildJob = {
    imagesDir: store.root,
    options: {
      profile: build.profile,
      force: build.force,
      cacheDir: join(config.dataDir, 'cache'),
      ...(config.kernelPackage ? { kernelPackage: config.kernelPackage } : {}),
      ...(config.debianMirror ? { debianMirror: config.debianMirror } : {}),
    },
  };
  const run = () => buildInWorker(job, build.onProgress);
  const result = queue.then(run, run);
  queue = result.catch(() => {});
  return result;
}

function buildInWorker(job: ImageBuildJob, onProgress?: (p: BuildProgress) => void): Promise<BuildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WORKER], { stdio: ['pipe', 'pipe', 'pipe'] });
    let answer: { result: BuildResult } | { error: WarrenError } | undefined;
    const tail: string[] = [];
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let msg: { progress?: BuildProgress; result?: BuildResult; error?: unknown };
      try {
        msg = JSON.parse(line);
      } catch {
        tail.push(line);
        return;
      }
      if (msg.progress !== undefined) onProgress?.(msg.progress);
      else if (msg.result !== undefined) answer = { result: msg.result };
      else if (msg.error !== undefined) answer = { error: WarrenError.fromBody(msg, 'IMAGE_BUILD_FAILED') };
    });
    createInterface({ input: child.stderr! }).on('line', (line) => {
      tail.push(line);
      if (tail.length > STDERR_TAIL_LINES) tail.shift();
      daemonLog('info', `image build: ${line}`);
    });
    child.once('error', (e) =>
      reject(new WarrenError('IMAGE_BUILD_FAILED', `cannot start the image build process: ${e.message}`)),
    );
    child.once('close', (code, signal) => {
      if (answer && 'result' in answer) resolve(answer.result);
      else if (answer) reject(answer.error);
      else {
        const output = tail.length > 0 ? `; its last output:\n${tail.join('\n')}` : '';
        reject(
          new WarrenError(
            'IMAGE_BUILD_FAILED',
            `the image build process ended (${signal ?? `exit ${code}`}) without a result${output}`,
          ),
        );
      }
    });
    // A worker that died before reading its job closes the pipe; the close above says why.
    child.stdin!.on('error', () => {});
    // Stdin stays open while the build runs: its end tells the worker that the agent is gone.
    child.stdin!.write(`${JSON.stringify(job)}\n`);
  });
}
