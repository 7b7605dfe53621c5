/**
 * What the control plane logs (pino, as the daemon configures it, into memory at `debug`):
 * JSON lines, one `request` line per request with its id, and never a credential or a secret
 * value, whatever the requests carried: the admin token, the join and host tokens, a tenant key,
 * the metrics token, and a session's credentials (files and env). Unit: the redaction of
 * fields named like secrets, and the pretty format. The end-to-end run with a real host agent
 * and VM is test/vm/platform.test.ts ("logs: …").
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { createLogger, logFunction, prettyLine } from '@warren/telemetry';
import {
  call,
  convergeAllRunning,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { logLines } from '../helpers/logs.ts';
import { openEvents } from '../helpers/sse.ts';
import { until } from '../helpers/until.ts';

let text = '';
const sink = new Writable({
  write(chunk, _enc, done) {
    text += chunk;
    done();
  },
});
const logger = createLogger({ name: 'control-plane', level: 'debug', format: 'json', destination: sink });
let t: TestControlPlane;
let agent: FakeAgent;
const metricsToken = randomBytes(32).toString('hex');

before(async () => {
  t = await openTestControlPlane({ metricsToken }, undefined, { logger, log: logFunction(logger) });
  agent = await new FakeAgent('log-host', { vcpus: 16, memoryMiB: 32768, diskMiB: 100_000 }).start(
    t.url,
    t.joinToken,
  );
});

after(async () => {
  await agent?.stop();
  await t?.close();
});

describe('logs', () => {
  test('no credential or secret value in any line, whatever the requests carried', async () => {
    const secrets = new Map<string, string>([
      ['admin token', t.adminToken],
      ['join token', t.joinToken],
      ['host token', agent.token],
      ['metrics token', metricsToken],
    ]);
    const { key } = await createTenantWithKey(t, { name: 'log-a' });
    secrets.set('tenant key', key.token);
    await convergeAllRunning(t, [agent]);
    const fileSecret = `file-secret-${randomBytes(12).toString('hex')}`;
    const envSecret = `env-secret-${randomBytes(12).toString('hex')}`;
    secrets.set('session credential (file)', fileSecret);
    secrets.set('session credential (env)', envSecret);
    const session = await call(t.url, 'POST', '/v1/tenants/log-a/sessions', {
      token: key.token,
      body: { files: { API_TOKEN: fileSecret }, env: { OPENAI_API_KEY: envSecret } },
    });
    assert.equal(session.status, 201, session.text);
    // Secrets in places a careless log line would pick up: query strings, headers, bodies, errors.
    await call(t.url, 'GET', `/v1/tenants/log-a?token=${key.token}`, { token: key.token });
    await call(t.url, 'POST', '/v1/tenants/log-a/exec', {
      token: key.token,
      body: { argv: ['echo', envSecret], env: { X: fileSecret } },
    });
    await call(t.url, 'POST', '/v1/tenants/log-a/exec', {
      token: key.token,
      body: { argv: [], bogus: envSecret },
    });
    await call(t.url, 'GET', '/v1/tenants', { token: `${t.adminToken}x` });
    await fetch(`${t.url}/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } });
    const events = await openEvents(t.url, key.token, { lastEventId: '0' });
    await events.next('an event', () => true);
    events.close();
    await call(t.url, 'POST', `/v1/tenants/log-a/sessions/${session.body.id}/end`, {
      token: key.token,
      body: {},
    });
    for (let i = 0; i < 3; i++) await agent.heartbeat();

    // The event stream's request line is written when it closes.
    await until('the event stream request line', () => text.includes('"route":"/v1/events"'), 5_000);
    const lines = logLines(text);
    const requests = lines.filter((l) => l.msg === 'request');
    assert.ok(requests.length >= 10, `${requests.length} request lines`);
    for (const r of requests) {
      assert.match(String(r.reqId), /^req_[0-9a-f]{16}$/);
      assert.equal(typeof r.route, 'string');
      assert.equal(typeof r.status, 'number');
    }
    // Heartbeats are debug lines; the API's requests info.
    assert.ok(requests.some((r) => r.route === '/v1/agent/heartbeat' && r.level === 20));
    assert.ok(requests.some((r) => r.route === '/v1/tenants/:tenant/sessions' && r.level === 30));
    for (const [what, value] of secrets) assert.ok(!text.includes(value), `the ${what} is in the log`);
  });

  test('fields named like secrets are redacted at any depth; the pretty format is one line', () => {
    let out = '';
    const l = createLogger({
      name: 'x',
      format: 'json',
      destination: {
        write: (s: string) => {
          out += s;
        },
      },
    });
    const value = 'super-secret-value-123456';
    l.info(
      {
        token: value,
        req: { headers: { authorization: `Bearer ${value}` } },
        body: { env: { A: value }, files: { B: value }, nested: { password: value, secret: value } },
        headers: { cookie: value },
        ok: 'visible',
      },
      'hello',
    );
    assert.ok(!out.includes(value), out);
    const [line] = logLines(out);
    assert.equal(line!.ok, 'visible');
    assert.equal(line!.token, '[redacted]');
    const pretty = prettyLine(out.trim());
    assert.match(pretty, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}x: hello /);
    assert.ok(pretty.endsWith('\n') && !pretty.slice(0, -1).includes('\n'));
  });
});
