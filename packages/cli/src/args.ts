import { parseIdleTimeout, WarrenError } from '@warren/protocol';

/** The one operand a command takes (e.g. the tenant NAME); anything else is a usage error. */
export function oneOperand(operands: string[], what: string, usage: string): string {
  if (operands.length !== 1) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      operands.length === 0
        ? `give the ${what}; usage: ${usage}`
        : `unexpected ${operands.slice(1).join(' ')}; usage: ${usage}`,
    );
  }
  return operands[0]!;
}

/** Turns node's parseArgs errors (unknown option, missing value) into usage errors. */
export function fromParseError(e: unknown): unknown {
  const code = (e as { code?: unknown })?.code;
  if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) {
    return new WarrenError('INVALID_ARGUMENT', `${(e as Error).message}; see \`warren --help\``);
  }
  return e;
}

/**
 * The usage line is the command's option list: an option given that is neither in it nor one
 * of `global` is a mistake (e.g. --undo on `tenant stop`), not something to ignore silently.
 */
export function onlyUsageOptions(options: object, usage: string, global: ReadonlySet<string>): void {
  for (const option of Object.keys(options)) {
    if (!global.has(option) && !usage.includes(`--${option}`)) {
      throw new WarrenError('INVALID_ARGUMENT', `--${option} is not an option here; usage: ${usage}`);
    }
  }
}

export function noOperands(operands: string[], usage: string): void {
  if (operands.length > 0)
    throw new WarrenError('INVALID_ARGUMENT', `unexpected ${operands.join(' ')}; usage: ${usage}`);
}

/** A whole-number flag value, or undefined when the flag was not given. */
export function intFlag(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value))
    throw new WarrenError('INVALID_ARGUMENT', `${flag} takes a whole number, got "${value}"`);
  return Number(value);
}

/** Exactly two operands (e.g. the tenant NAME and a SNAPSHOT); anything else is a usage error. */
export function twoOperands(operands: string[], what: string, usage: string): [string, string] {
  if (operands.length !== 2) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      operands.length < 2
        ? `give the ${what}; usage: ${usage}`
        : `unexpected ${operands.slice(2).join(' ')}; usage: ${usage}`,
    );
  }
  return [operands[0]!, operands[1]!];
}

/**
 * --idle-timeout: a duration (`20s`, `15m`, `2h`, `1d`) or `never`, checked here with the
 * API's own parser; `default` (only where `allowDefault`) goes back to the platform default (null).
 */
export function idleTimeoutFlag(value: string | undefined, allowDefault: boolean): string | null | undefined {
  if (value === undefined) return undefined;
  if (allowDefault && value === 'default') return null;
  const r = parseIdleTimeout(value);
  if ('error' in r) throw new WarrenError('INVALID_ARGUMENT', `--idle-timeout: ${r.error}`);
  return value;
}
