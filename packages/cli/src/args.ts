import { WarrenError } from '@warren/protocol';

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
