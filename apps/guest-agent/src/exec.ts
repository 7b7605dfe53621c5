import { type ChildProcess, spawn } from 'node:child_process';
import type { ServerHttp2Stream } from 'node:http2';
import {
  ExecRequest,
  encodeFrame,
  FrameDecoder,
  FrameType,
  MAX_FRAME_PAYLOAD,
  parseOrThrow,
  WarrenError,
} from '@warren/protocol/guest';
import { toWarrenError } from './respond.ts';
import { secretsEnv, sessionEnv } from './restore.ts';
import { resolveUser } from './users.ts';

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * One exec = one HTTP/2 stream. The request body is frames (Spec, then Stdin), the
 * response body is frames (Stdout/Stderr, then Exit or Error). Closing the stream from
 * the host kills the command's whole process group.
 */
export function handleExec(stream: ServerHttp2Stream): void {
  const decoder = new FrameDecoder();
  let child: ChildProcess | undefined;
  let started = false;
  let finished = false;
  const pendingStdin: Buffer[] = [];
  let stdinEnded = false;

  const fail = (error: unknown) => {
    if (finished) return;
    finished = true;
    killGroup(child);
    if (stream.destroyed) return;
    if (!stream.headersSent)
      stream.respond({ ':status': 200, 'content-type': 'application/x-warren-frames' });
    stream.end(encodeFrame(FrameType.Error, JSON.stringify(toWarrenError(error).toBody())));
  };

  stream.on('close', () => {
    if (!finished) killGroup(child);
    finished = true;
  });
  stream.on('error', () => killGroup(child));

  stream.on('data', (chunk: Buffer) => {
    let frames: ReturnType<FrameDecoder['push']>;
    try {
      frames = decoder.push(chunk);
    } catch (e) {
      fail(new WarrenError('INVALID_ARGUMENT', (e as Error).message));
      return;
    }
    for (const frame of frames) {
      if (!started) {
        if (frame.type !== FrameType.Spec) {
          fail(new WarrenError('INVALID_ARGUMENT', 'first exec frame must be the spec'));
          return;
        }
        started = true;
        let spec: unknown;
        try {
          spec = JSON.parse(frame.payload.toString('utf8'));
        } catch {
          fail(new WarrenError('INVALID_ARGUMENT', 'exec spec is not valid JSON'));
          return;
        }
        start(spec).catch(fail);
      } else if (frame.type === FrameType.Stdin) {
        writeStdin(frame.payload);
      } else {
        fail(new WarrenError('INVALID_ARGUMENT', `unexpected frame type ${frame.type}`));
        return;
      }
    }
  });
  stream.on('end', () => {
    stdinEnded = true;
    if (!started) fail(new WarrenError('INVALID_ARGUMENT', 'exec request ended before its spec'));
    else if (child?.stdin) child.stdin.end();
  });

  function writeStdin(data: Buffer) {
    if (!child) {
      pendingStdin.push(data);
      return;
    }
    if (child.stdin && !child.stdin.destroyed) {
      if (!child.stdin.write(data)) {
        stream.pause();
        child.stdin.once('drain', () => stream.resume());
      }
    }
  }

  async function start(raw: unknown) {
    const spec = parseOrThrow(ExecRequest, raw);
    const user = spec.user === undefined ? undefined : await resolveUser(spec.user);
    if (finished) return;
    const env: Record<string, string> = {
      PATH: DEFAULT_PATH,
      HOME: user?.home ?? '/root',
      USER: user?.name ?? 'root',
      LOGNAME: user?.name ?? 'root',
      LANG: 'C.UTF-8',
      // A session's credentials, while it lasts; the request's own env wins.
      ...sessionEnv(),
      ...(spec.secretEnv ? await secretsEnv() : {}),
      ...spec.env,
    };
    const startedAt = performance.now();
    const proc = spawn(spec.argv[0]!, spec.argv.slice(1), {
      cwd: spec.cwd ?? user?.home ?? '/',
      env,
      // Its own process group, so a timeout or a cancel kills everything it started.
      detached: true,
      stdio: [spec.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
    });
    child = proc;
    let timedOut = false;
    const timer = spec.timeoutMs
      ? setTimeout(() => {
          timedOut = true;
          killGroup(proc);
        }, spec.timeoutMs)
      : undefined;

    proc.once('error', (err) => {
      clearTimeout(timer);
      const e = err as NodeJS.ErrnoException;
      fail(
        new WarrenError('EXEC_FAILED', `cannot run ${JSON.stringify(spec.argv[0])}: ${e.code ?? e.message}`),
      );
    });
    proc.once('spawn', () => {
      if (finished) {
        killGroup(proc);
        return;
      }
      stream.respond({ ':status': 200, 'content-type': 'application/x-warren-frames' });
      for (const data of pendingStdin.splice(0)) writeStdin(data);
      if (stdinEnded) proc.stdin?.end();
      proc.stdin?.on('error', () => {
        // The command closed its stdin early (EPIPE); the rest of the input is dropped.
      });
      pipeOutput(proc.stdout!, FrameType.Stdout);
      pipeOutput(proc.stderr!, FrameType.Stderr);
    });
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      if (finished) return;
      finished = true;
      const exit = {
        exitCode: code,
        signal,
        timedOut,
        durationMs: Math.round(performance.now() - startedAt),
      };
      stream.end(encodeFrame(FrameType.Exit, JSON.stringify(exit)));
    });
  }

  function pipeOutput(
    source: NodeJS.ReadableStream,
    type: typeof FrameType.Stdout | typeof FrameType.Stderr,
  ) {
    source.on('data', (chunk: Buffer) => {
      if (stream.destroyed) return;
      for (let off = 0; off < chunk.length; off += MAX_FRAME_PAYLOAD) {
        if (!stream.write(encodeFrame(type, chunk.subarray(off, off + MAX_FRAME_PAYLOAD)))) {
          // HTTP/2 flow control is full: stop reading the pipe so the command blocks too.
          source.pause();
          stream.once('drain', () => source.resume());
        }
      }
    });
  }
}

function killGroup(proc: ChildProcess | undefined) {
  if (!proc?.pid || proc.exitCode !== null || proc.signalCode !== null) return;
  try {
    process.kill(-proc.pid, 'SIGKILL');
  } catch {
    proc.kill('SIGKILL');
  }
}
