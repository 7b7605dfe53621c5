import { constants } from 'node:os';
import { WarrenError } from '@warren/protocol';

/** Prints a value as JSON (for --json) or through `human`. */
export function emit(json: boolean, value: unknown, human: () => void): void {
  if (json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else human();
}

export function table(rows: Record<string, unknown>[], columns: string[]): void {
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  process.stdout.write(`${line(columns.map((c) => c.toUpperCase()))}\n`);
  for (const r of rows) process.stdout.write(`${line(columns.map((c) => String(r[c] ?? '')))}\n`);
}

/** Errors go to stderr with their code and how to fix them; --json prints the error body. */
export function reportError(e: unknown, json: boolean): number {
  const err = e instanceof WarrenError ? e : new WarrenError('INTERNAL', String((e as Error)?.message ?? e));
  if (json) process.stderr.write(`${JSON.stringify(err.toBody())}\n`);
  else process.stderr.write(`warren: ${err.code}: ${err.message}\n  fix: ${err.fix}\n`);
  return err.code === 'INVALID_ARGUMENT' ? 2 : 1;
}

/** A command's exit status as a shell reports it: its code, or 128+n when signal n ended it. */
export function exitStatusOf(exit: { exitCode: number | null; signal: string | null }): number {
  if (exit.exitCode !== null) return exit.exitCode;
  const n = exit.signal ? (constants.signals as Record<string, number>)[exit.signal] : undefined;
  return 128 + (n ?? 9);
}

export function mib(n: number): string {
  return `${n} MiB`;
}

/** "12s ago", "5m ago", "3h ago", "2d ago": ages read faster than timestamps in a table. */
export function ago(iso: string | null, now = Date.now()): string {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (Number.isNaN(s)) return iso;
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

/**
 * SIGINT/SIGTERM abort the running command instead of killing the CLI, so it can clean up and
 * exit 130. `dispose` gives the signals back.
 */
export function interruptible(): { signal: AbortSignal; interrupted: () => boolean; dispose: () => void } {
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    signal: abort.signal,
    interrupted: () => abort.signal.aborted,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
