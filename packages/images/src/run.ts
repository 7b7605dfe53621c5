import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { type ErrorCode, WarrenError } from '@warren/protocol';

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Each output line, for progress display of long steps. */
  onLine?: (line: string) => void;
  input?: string;
  /** Code of the error thrown when the tool fails (default IMAGE_BUILD_FAILED). */
  errorCode?: ErrorCode;
}

/** Runs a host tool (build steps, qemu-img, ...); on failure the error names the command and carries its last output. */
export function run(command: string, args: string[], options: RunOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const tail: string[] = [];
    let stdout = '';
    const collect = (stream: NodeJS.ReadableStream, keep: boolean) => {
      const rl = createInterface({ input: stream });
      rl.on('line', (line) => {
        if (keep) stdout += `${line}\n`;
        tail.push(line);
        if (tail.length > 20) tail.shift();
        options.onLine?.(line);
      });
    };
    collect(child.stdout!, true);
    collect(child.stderr!, false);
    if (options.input !== undefined) child.stdin!.end(options.input);
    const errorCode = options.errorCode ?? 'IMAGE_BUILD_FAILED';
    child.once('error', (e) =>
      reject(new WarrenError(errorCode, `cannot run ${command}: ${e.message}`, { cause: e })),
    );
    child.once('close', (code, signal) => {
      if (code === 0) resolve(stdout);
      else
        reject(
          new WarrenError(
            errorCode,
            `${command} ${args.slice(0, 4).join(' ')} failed (${signal ?? `exit ${code}`}):\n${tail.join('\n')}`,
          ),
        );
    });
  });
}
