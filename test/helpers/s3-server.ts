/**
 * A real S3-protocol server (s3rver) on loopback for tests, in a child process of its own: its
 * list pagination encrypts continuation tokens with DES, which Node 24's OpenSSL 3 only has
 * with the legacy provider, and that flag should not leak into the test process itself.
 * Run as a script, it serves and prints the port; `startS3Server` starts and stops it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { rename, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { until } from './until.ts';

export interface S3Server {
  endpoint: string;
  /** Every request line the server saw (method and URL), to check which S3 calls were made. */
  requests: string[];
  stop(): Promise<void>;
}

const READY = /^listening (\d+)$/m;

/** Starts s3rver on 127.0.0.1 with `bucket` created, storing under `directory`. */
export async function startS3Server(directory: string, bucket: string): Promise<S3Server> {
  const child: ChildProcess = spawn(
    process.execPath,
    ['--openssl-legacy-provider', fileURLToPath(import.meta.url), directory, bucket],
    // stdin is a pipe so the server also ends when the test process dies without stopping it.
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  let out = '';
  const requests: string[] = [];
  child.stdout?.setEncoding('utf8').on('data', (text: string) => {
    out += text;
    for (const line of text.split('\n')) if (line.startsWith('request ')) requests.push(line.slice(8));
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  };
  try {
    const port = await until(
      's3rver listens',
      () => READY.exec(out)?.[1] ?? (child.exitCode !== null ? 'dead' : undefined),
      30_000,
      20,
    );
    if (port === 'dead') throw new Error(`s3rver exited with ${child.exitCode}`);
    return { endpoint: `http://127.0.0.1:${port}`, requests, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [directory, bucket] = process.argv.slice(2);
  // s3rver is CommonJS without types; this is the only place that loads it.
  const S3rver = createRequire(import.meta.url)('@20minutes/s3rver') as new (
    options: Record<string, unknown>,
  ) => { run(): Promise<{ port: number }>; httpServer?: import('node:http').Server };
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    // Its SigV4 check canonicalises list queries differently from the SDK (a / in a prefix);
    // an unknown access key is still refused.
    allowMismatchedSignatures: true,
    directory,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  makeOverwritesAtomic(server as unknown as { store: ContentStore });
  const { port } = await server.run();
  server.httpServer?.on('request', (req) => process.stdout.write(`request ${req.method} ${req.url}\n`));
  process.stdout.write(`listening ${port}\n`);
  process.on('SIGTERM', () => process.exit(0));
  process.stdin.resume().on('end', () => process.exit(0));
}

interface ContentStore {
  putContent(path: string, content: unknown): Promise<[number, string]>;
}

/**
 * S3 replaces an object atomically: a GET sees one PUT's whole body, never a mix. s3rver writes
 * straight into the object's file, so two concurrent PUTs of one key interleave their bytes
 * (the contract test "concurrent puts of one key leave one complete object" failed on it under
 * load). Writing to a sibling temporary file and renaming it over the object gives S3's
 * behaviour; s3rver lists only names ending in `._S3rver_object`, so the temporary file is
 * never seen as an object.
 */
function makeOverwritesAtomic(server: { store: ContentStore }): void {
  const store = server.store;
  const putContent = store.putContent.bind(store);
  let serial = 0;
  store.putContent = async (objectPath, content) => {
    const temporary = `${objectPath}.${process.pid}-${++serial}.partial`;
    try {
      // A Buffer body resolves before its file is even opened; as a stream it resolves when
      // the file is complete, so the rename below finds it.
      const body = Buffer.isBuffer(content) ? Readable.from([content]) : content;
      const result = await putContent(temporary, body);
      await rename(temporary, objectPath);
      return result;
    } catch (err) {
      await rm(temporary, { force: true });
      throw err;
    }
  };
}
