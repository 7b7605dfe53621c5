/**
 * The guest agent's loader (AGENT_LOADER) uses the code cache made at image build only for the
 * bundle it was made from. V8's own check compares the source's length, not its text, so a
 * cache of another bundle of the same length would run that bundle's code: the loader's CRC-32
 * header is what refuses it. Real loader, real Node, real V8 cache; no VM.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { AGENT_FILES, AGENT_LOADER } from '@warren/images';

const run = promisify(execFile);
const dir = await mkdtemp(join(tmpdir(), 'wt-agent-cache-'));
after(() => rm(dir, { recursive: true, force: true }));

const loader = join(dir, AGENT_FILES.loader);
const bundle = join(dir, AGENT_FILES.bundle);
const cache = join(dir, AGENT_FILES.codeCache);
await writeFile(loader, AGENT_LOADER);

async function runLoader(env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string }> {
  return run(process.execPath, [loader], { env: { PATH: process.env.PATH ?? '', ...env } });
}

test('a cache made for one bundle runs that bundle, and is refused for another of the same length', async () => {
  const a = "function answer() { return 'A'; }\nprocess.stdout.write(answer());\n";
  const b = "function answer() { return 'B'; }\nprocess.stdout.write(answer());\n";
  assert.equal(a.length, b.length);
  await writeFile(bundle, a);
  assert.equal((await runLoader({ WARREN_AGENT_CODE_CACHE_OUT: cache })).stdout, 'A');
  const made = await readFile(cache);
  assert.ok(made.length > 4, 'the warm-up wrote a cache');

  const withCache = await runLoader();
  assert.equal(withCache.stdout, 'A');
  assert.equal(withCache.stderr, '', 'V8 took the cache');

  await writeFile(bundle, b);
  const other = await runLoader();
  assert.equal(other.stdout, 'B', 'the changed bundle ran, not the cached code of the old one');
  assert.deepEqual(await readFile(cache), made, 'a normal run leaves the cache alone');
});

test('a corrupt or truncated cache is ignored, or refused by V8, and the bundle still runs', async () => {
  await writeFile(bundle, "process.stdout.write('ok');\n");
  await runLoader({ WARREN_AGENT_CODE_CACHE_OUT: cache });
  const made = await readFile(cache);
  await writeFile(cache, made.subarray(0, 3));
  assert.equal((await runLoader()).stdout, 'ok');
  const flipped = Buffer.from(made);
  for (let i = 8; i < flipped.length; i += 7) flipped[i]! ^= 0xff;
  await writeFile(cache, flipped);
  const r = await runLoader();
  assert.equal(r.stdout, 'ok');
  assert.match(r.stderr, /code cache rejected/);
});
