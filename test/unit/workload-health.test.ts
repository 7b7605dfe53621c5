/**
 * The host agent's check of an image's workload (the OpenClaw gateway's /healthz) against real
 * HTTP servers on loopback: healthy, failing, silent, and hostile (an endless body), which must
 * not hold the check or make the agent buffer.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import { checkWorkload, WORKLOAD_CHECKS } from '../../apps/host-agent/src/vm/workload-health.ts';

describe('workload health check', () => {
  const servers: Server[] = [];
  after(() => {
    for (const s of servers) {
      s.closeAllConnections();
      s.close();
    }
  });
  async function serve(handler: Parameters<typeof createServer>[1]): Promise<number> {
    const s = createServer(handler);
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return (s.address() as AddressInfo).port;
  }
  const check = (port: number) => ({ name: 'the test gateway', port, path: '/healthz' });

  test('the openclaw profile checks the gateway’s /healthz on the dashboard port', () => {
    assert.deepEqual(WORKLOAD_CHECKS.openclaw, {
      name: 'the OpenClaw gateway',
      port: 8080,
      path: '/healthz',
    });
    assert.equal(WORKLOAD_CHECKS.standard, undefined);
  });

  test('2xx is healthy; another status says which', async () => {
    const seen: string[] = [];
    const ok = await serve((req, res) => {
      seen.push(req.url ?? '');
      res.end('{"ok":true}');
    });
    assert.equal(await checkWorkload('127.0.0.1', check(ok), 2000), undefined);
    assert.deepEqual(seen, ['/healthz']);
    const down = await serve((_req, res) => {
      res.statusCode = 503;
      res.end();
    });
    assert.match(
      (await checkWorkload('127.0.0.1', check(down), 2000))!,
      /the test gateway \(\/healthz on port \d+\): HTTP 503/,
    );
  });

  test('nothing listening, a silent server and an endless body all end within the timeout', async () => {
    const closed = await serve(() => {});
    servers.pop()!.close();
    assert.match((await checkWorkload('127.0.0.1', check(closed), 2000))!, /ECONNREFUSED/);
    const silent = await serve(() => {});
    const t0 = Date.now();
    assert.match((await checkWorkload('127.0.0.1', check(silent), 300))!, /no answer within 300 ms/);
    assert.ok(Date.now() - t0 < 2000);
    let sent = 0;
    const endless = await serve((_req, res) => {
      const chunk = Buffer.alloc(64 * 1024, 'x');
      const push = () => {
        while (res.write(chunk)) sent += chunk.length;
        sent += chunk.length;
      };
      res.on('drain', push);
      push();
    });
    assert.equal(await checkWorkload('127.0.0.1', check(endless), 2000), undefined);
    // The check hung up after the status line instead of reading the body.
    assert.ok(sent < 64 * 1024 * 1024, `sent ${sent}`);
  });
});
