/** The keep rules of a backup policy (restic's `forget --keep-last/-hourly/-daily/-weekly`). */
export interface KeepRules {
  keepLast: number;
  keepHourly: number;
  keepDaily: number;
  keepWeekly: number;
}

/**
 * Which complete backups the rules do NOT keep (to be deleted). `at` is a backup's point in
 * time (ISO 8601, UTC). Newest first: the newest `keepLast`, plus for each of hourly, daily and
 * weekly the newest backup of each of the most recent N distinct hours, days and ISO weeks
 * that have one. A backup kept by any rule is kept. Buckets are UTC, so the result does not
 * depend on the machine's time zone.
 */
export function pruneSelection(backups: { id: string; at: string }[], rules: KeepRules): string[] {
  // By instant, not by string: a host may write its time with an offset.
  const sorted = backups
    .map((b) => ({ ...b, t: Date.parse(b.at) }))
    .sort((a, b) => b.t - a.t || b.id.localeCompare(a.id));
  const keep = new Set<string>(sorted.slice(0, rules.keepLast).map((b) => b.id));
  const buckets: [number, (d: Date) => string][] = [
    [rules.keepHourly, (d) => d.toISOString().slice(0, 13)],
    [rules.keepDaily, (d) => d.toISOString().slice(0, 10)],
    [rules.keepWeekly, isoWeek],
  ];
  for (const [n, bucketOf] of buckets) {
    const seen = new Set<string>();
    for (const b of sorted) {
      if (seen.size >= n) break;
      const bucket = bucketOf(new Date(b.t));
      if (seen.has(bucket)) continue;
      seen.add(bucket);
      keep.add(b.id);
    }
  }
  return sorted.filter((b) => !keep.has(b.id)).map((b) => b.id);
}

/** `YYYY-Www`, the ISO 8601 week (weeks start on Monday; week 1 holds the year's first Thursday). */
function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}
