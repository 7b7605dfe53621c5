import { request } from 'node:http';
import { OPENCLAW_GUEST } from '@warren/images';
import { OPENCLAW_WORKLOAD } from '@warren/protocol';

/** An HTTP health endpoint of the workload an image profile runs, checked beside the guest agent. */
export interface WorkloadCheck {
  name: string;
  port: number;
  path: string;
}

/**
 * The one hook: profiles whose workload's health is the tenant's health. The openclaw image
 * runs the OpenClaw gateway on the dashboard port; its `/healthz` answers while it is live.
 */
export const WORKLOAD_CHECKS: Partial<Record<string, WorkloadCheck>> = {
  openclaw: { name: OPENCLAW_WORKLOAD.name, port: OPENCLAW_GUEST.defaultPort, path: '/healthz' },
};

/**
 * Asks the workload over the VM's own link (the guest IP from its record, as the dashboard
 * proxy does). Resolves to undefined when it answers 2xx, else to why not. Reads at most a
 * small body: a hostile guest cannot make the agent buffer.
 */
export function checkWorkload(
  guestIp: string,
  check: WorkloadCheck,
  timeoutMs: number,
): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = request({
      host: guestIp,
      port: check.port,
      path: check.path,
      timeout: timeoutMs,
      agent: false,
    });
    const fail = (why: string) => {
      req.destroy();
      resolve(`${check.name} (${check.path} on port ${check.port}): ${why}`);
    };
    req.on('timeout', () => fail(`no answer within ${timeoutMs} ms`));
    req.on('error', (e) => fail(e.message));
    req.on('response', (res) => {
      res.destroy();
      const status = res.statusCode ?? 0;
      if (status >= 200 && status < 300) resolve(undefined);
      else fail(`HTTP ${status}`);
    });
    req.end();
  });
}
