/** What the benches share: reading their numeric flags, and summing up their runs. */

/** A `--name` flag's value (parseArgs gives strings) as a positive whole number, or throws. */
export function positiveInt<K extends string>(values: { readonly [k in K]?: unknown }, name: K): number {
  const n = Number(values[name]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name}: a positive integer, got ${values[name]}`);
  return n;
}

/** The middle of `xs` (for an even count, the upper of the two middle values). */
export function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}
