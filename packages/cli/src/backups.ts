import { type Backup, type BackupProgress, WarrenError } from '@warren/protocol';

/** `12.0/100.0 MiB (12%)`: how far a backup or restore has come, for the progress line. */
export function progressText(p: Pick<BackupProgress, 'bytesDone' | 'bytesTotal'> | null | undefined): string {
  if (!p || p.bytesTotal === 0) return 'starting';
  const mib = (n: number) => (n / 1048576).toFixed(1);
  return `${mib(p.bytesDone)}/${mib(p.bytesTotal)} MiB (${Math.floor((100 * p.bytesDone) / p.bytesTotal)}%)`;
}

/**
 * Prints progress on stderr as it changes: on a terminal one line rewritten in place, else a
 * line per change (so a log stays readable). `end` finishes the line.
 */
export function progressLine(prefix: string): { update: (text: string) => void; end: () => void } {
  const tty = process.stderr.isTTY === true;
  let last = '';
  return {
    update(text) {
      if (text === last) return;
      last = text;
      if (tty) process.stderr.write(`\r\x1b[K${prefix}: ${text}`);
      else process.stderr.write(`${prefix}: ${text}\n`);
    },
    end() {
      if (tty && last) process.stderr.write('\n');
    },
  };
}

/** `--every 30m|1h|2d|off` as minutes (null: no schedule). */
export function everyMinutes(value: string): number | null {
  if (value === 'off' || value === 'none') return null;
  const m = /^(\d+)(m|h|d)$/.exec(value);
  if (!m || Number(m[1]) === 0) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `--every takes a duration like 30m, 1h or 2d, or off; got "${value}"`,
    );
  }
  return Number(m[1]) * { m: 1, h: 60, d: 1440 }[m[2] as 'm' | 'h' | 'd'];
}

/** A backup's last restore drill in a word or three: `-`, `running`, `passed (12 files)`, `FAILED BACKUP_CORRUPT`. */
export function drillText(d: Backup['drill']): string {
  if (!d) return '-';
  if (d.state === 'running') return 'running';
  if (d.state === 'passed') return `passed (${d.filesChecked} files)`;
  return `FAILED ${d.error?.code ?? ''}`.trim();
}
