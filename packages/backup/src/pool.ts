/**
 * Bounded concurrency over a lazily pulled sequence: at most `concurrency` calls run at once and
 * the next item is taken only when one ends, so a volume of a million chunks never has more
 * than `concurrency` of them in memory.
 */
export async function runPool<T>(
  items: Iterable<T>,
  concurrency: number,
  fn: (item: T) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const iterator = items[Symbol.iterator]();
  let failure: { err: unknown } | undefined;
  const worker = async () => {
    while (!failure) {
      if (signal?.aborted) {
        failure ??= { err: signal.reason };
        return;
      }
      const next = iterator.next();
      if (next.done) return;
      try {
        await fn(next.value);
      } catch (err) {
        // The first failure wins; the other workers finish their item and stop.
        failure ??= { err };
      }
    }
  };
  const workers = Math.max(1, Math.floor(concurrency));
  await Promise.all(Array.from({ length: workers }, worker));
  if (failure) throw failure.err;
}

/** Calls `report` at most once per `intervalMs`, and once more on `flush`. */
export function throttle<T>(intervalMs: number, report: ((value: T) => void) | undefined) {
  let last = 0;
  return {
    tick(value: () => T) {
      if (!report) return;
      const now = Date.now();
      if (now - last < intervalMs) return;
      last = now;
      report(value());
    },
    flush(value: T) {
      report?.(value);
    },
  };
}
