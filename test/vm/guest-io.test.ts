/**
 * The guest agent end to end in a real microVM: streamed output, large files,
 * concurrency, timeouts. One VM serves the whole file to keep the suite fast.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { GuestClient } from '@warren/host-agent';
import { collect, openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';

describe('guest agent in a microVM', { timeout: 600_000 }, () => {
  let host: TestHost;
  let guest: GuestClient;

  before(async () => {
    host = await openTestHost();
    const vm = await host.vms.create({ image: await minimalImage(), memoryMiB: 512, diskMiB: 256 });
    await host.vms.start(vm.id);
    guest = await host.vms.guest(vm.id);
  });
  after(() => host?.dispose());

  test('exec runs in the guest kernel, not the host', async () => {
    const { stdout, exit } = await collect((o) => guest.exec({ argv: ['uname', '-r'] }, o));
    assert.deepEqual({ code: (exit as { exitCode: number }).exitCode }, { code: 0 });
    assert.equal(stdout.trim(), (await guest.health()).kernelRelease);
    assert.notEqual(stdout.trim(), (await import('node:os')).release());
  });

  test('100 MB of output arrives complete and in order', async () => {
    // The guest emits 100 MB of random bytes and reports their sha256 on stderr; any lost,
    // repeated or reordered chunk changes the digest the host computes.
    const size = 100_000_000;
    const hash = createHash('sha256');
    let bytes = 0;
    let stderr = '';
    const exit = await guest.exec(
      {
        argv: [
          'sh',
          '-c',
          `head -c ${size} /dev/urandom > /tmp/out && sha256sum /tmp/out >&2 && cat /tmp/out && rm /tmp/out`,
        ],
      },
      {
        onStdout: (chunk) => {
          hash.update(chunk);
          bytes += chunk.length;
        },
        onStderr: (chunk) => (stderr += chunk),
      },
    );
    assert.equal(exit.exitCode, 0);
    assert.equal(bytes, size);
    assert.equal(hash.digest('hex'), stderr.split(' ')[0]);
  });

  test('a 50 MB file written and read back has the same sha256', async () => {
    const data = randomBytes(50 * 1024 * 1024);
    const digest = createHash('sha256').update(data).digest('hex');
    const written = await guest.writeFile(
      '/workspace/big.bin',
      Readable.from([data.subarray(0, 25e6), data.subarray(25e6)]),
    );
    assert.deepEqual(written, { size: data.length, sha256: digest });
    const inGuest = await collect((o) => guest.exec({ argv: ['sha256sum', '/workspace/big.bin'] }, o));
    assert.equal(inGuest.stdout.split(' ')[0], digest);
    const back = createHash('sha256');
    let size = 0;
    for await (const chunk of await guest.readFile('/workspace/big.bin')) {
      back.update(chunk as Buffer);
      size += (chunk as Buffer).length;
    }
    assert.equal(size, data.length);
    assert.equal(back.digest('hex'), digest);
    await guest.remove({ path: '/workspace/big.bin' });
    await assert.rejects(guest.stat('/workspace/big.bin'), { code: 'NOT_FOUND' });
  });

  test('the host refuses a file larger than it asked for', async () => {
    await guest.writeFile('/tmp/five-mb', Buffer.alloc(5 * 1024 * 1024, 1));
    await assert.rejects(guest.readFileBuffer('/tmp/five-mb', 1024 * 1024), { code: 'PAYLOAD_TOO_LARGE' });
  });

  test('10 concurrent execs in one VM each get their own output and exit code', async () => {
    const runs = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        collect((o) => guest.exec({ argv: ['sh', '-c', `sleep 1; echo run-${i}; exit ${i}`] }, o)),
      ),
    );
    runs.forEach((r, i) => {
      assert.equal(r.stdout, `run-${i}\n`);
      assert.equal((r.exit as { exitCode: number }).exitCode, i);
    });
  });

  test('a command over its timeout is killed and reported as timed out', async () => {
    const started = Date.now();
    const exit = await guest.exec({ argv: ['sh', '-c', 'sleep 60 & sleep 60'], timeoutMs: 1500 });
    assert.equal(exit.timedOut, true);
    assert.equal(exit.exitCode, null);
    assert.equal(exit.signal, 'SIGKILL');
    assert.ok(Date.now() - started < 30_000);
    // The whole process group died, the background sleep included.
    const ps = await collect((o) =>
      guest.exec({ argv: ['sh', '-c', 'ps -o comm | grep -c "^sleep" || true'] }, o),
    );
    assert.equal(ps.stdout.trim(), '0');
  });

  test('stdin, env, cwd and the unprivileged user reach the command', async () => {
    const r = await collect((o) =>
      guest.exec(
        {
          argv: ['sh', '-c', 'cat; echo "$GREETING $(id -u) $(pwd)"'],
          env: { GREETING: 'hi' },
          cwd: '/tmp',
          user: 'agent',
        },
        { ...o, stdin: 'from-stdin\n' },
      ),
    );
    assert.equal(r.stdout, 'from-stdin\nhi 1000 /tmp\n');
  });

  test('bad input gets stable error codes', async () => {
    await assert.rejects(guest.exec({ argv: ['/no/such/binary'] }), { code: 'EXEC_FAILED' });
    await assert.rejects(guest.exec({ argv: [] }), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(guest.stat('relative/path'), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(guest.readFileBuffer('/etc'), { code: 'FILE_ERROR' });
  });

  test('files: mkdir, list, stat', async () => {
    await guest.mkdir({ path: '/workspace/a/b', parents: true });
    await guest.writeFile('/workspace/a/b/x.txt', 'x');
    const entries = await guest.list('/workspace/a/b');
    assert.deepEqual(
      entries.map((e) => [e.name, e.type, e.size]),
      [['x.txt', 'file', 1]],
    );
    assert.equal((await guest.stat('/workspace/a')).type, 'directory');
  });
});
