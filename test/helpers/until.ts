import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Polls `check` until it returns something truthy, and returns that. A check that throws counts
 * as "not yet" (a daemon still starting); the last error is in the timeout's message.
 */
export async function until<T>(
  what: string,
  check: () => T | false | undefined | Promise<T | false | undefined>,
  timeoutMs = 60_000,
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting until ${what}${last ? ` (last error: ${last})` : ''}`,
  );
}
