import type { ChangeList, TenantSession } from '@warren/protocol';
import { ago, table } from './output.ts';

/** Changed files listed by a human-readable command before it says "and N more". */
export const SHOWN_CHANGES = 20;

const MARK = { added: 'A', modified: 'M', deleted: 'D' } as const;

/** One line per changed file (`A data /workspace/out.txt`), at most `limit` of them. */
export function changeLines(list: ChangeList, limit = Number.POSITIVE_INFINITY): string[] {
  const lines = list.changes
    .slice(0, limit)
    .map((c) => `${MARK[c.change]} ${c.disk.padEnd(4)} ${c.path}${c.type === 'directory' ? '/' : ''}`);
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
