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
