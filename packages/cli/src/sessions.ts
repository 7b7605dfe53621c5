import type { ChangeList, TenantSession } from '@warren/protocol';
import { ago, table } from './output.ts';

/** Changed files listed by a human-readable command before it says "and N more". */
export const SHOWN_CHANGES = 20;

const MARK = { added: 'A', modified: 'M', deleted: 'D' } as const;

/**
 * A guest-chosen file name made safe for a terminal: control characters (an escape sequence
 * could rewrite the screen or the window title) and backslashes shown as escapes.
 */
export function printable(path: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point.
  return path.replace(/[\\\x00-\x1f\x7f-\x9f]/g, (c) =>
    c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
}

/** One line per changed file (`A data /workspace/out.txt`), at most `limit` of them. */
export function changeLines(list: ChangeList, limit = Number.POSITIVE_INFINITY): string[] {
  const lines = list.changes
    .slice(0, limit)
    .map(
      (c) => `${MARK[c.change]} ${c.disk.padEnd(4)} ${printable(c.path)}${c.type === 'directory' ? '/' : ''}`,
    );
  const more = list.changes.length - Math.min(limit, list.changes.length);
  if (more > 0 || list.truncated) lines.push(`… and ${more}${list.truncated ? '+' : ''} more`);
  return lines;
}

export function sessionTable(sessions: TenantSession[]): void {
  table(
    sessions.map((s) => ({
      id: s.id,
      state: s.state,
      outcome: s.outcome ?? '-',
      started: ago(s.createdAt),
      expires: s.state === 'active' ? s.expiresAt : '-',
      error: s.error ? s.error.code : '-',
    })),
    ['id', 'state', 'outcome', 'started', 'expires', 'error'],
  );
}
