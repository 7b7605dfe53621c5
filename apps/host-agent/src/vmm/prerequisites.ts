import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { delimiter, join } from 'node:path';

/** The commands of `names` that are not on PATH (or, given as paths, not executable). */
export async function missingCommands(names: readonly string[]): Promise<string[]> {
  const missing: string[] = [];
  for (const name of names) {
    const candidates = name.includes('/')
      ? [name]
      : (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).map((dir) => join(dir, name));
    let found = false;
    for (const c of candidates) {
      if (
        await access(c, constants.X_OK).then(
          () => true,
          () => false,
        )
      ) {
        found = true;
        break;
      }
    }
    if (!found) missing.push(name);
  }
  return missing;
}

/** Why a driver that needs root (to switch uids, make namespaces, chown disks) cannot run, if it cannot. */
export function needsRoot(driver: string): string | undefined {
  return process.getuid?.() === 0
    ? undefined
    : `the ${driver} driver needs root (the host agent runs as root)`;
}
