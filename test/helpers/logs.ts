/**
 * The daemons log JSON lines (pino, docs/operations.md "Logs"). Tests that wait on a log
 * message read them through here, so they match the message, not the line's layout.
 */
export interface LogLine {
  level: number;
  time: string;
  name: string;
  msg: string;
  [field: string]: unknown;
}

/** Every JSON log line in `text`; a line that is not JSON throws (a daemon wrote a plain line). */
export function logLines(text: string): LogLine[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      try {
        return JSON.parse(l) as LogLine;
      } catch {
        throw new Error(`not a JSON log line: ${l.slice(0, 300)}`);
      }
    });
}

/** The messages of the JSON log lines in `text`, one per line, for `assert.match`. */
export function logMessages(text: string): string {
  return logLines(text)
    .map((l) => l.msg)
    .join('\n');
}
