/**
 * The keep rules of backup policies (restic's `forget --keep-*`), as a pure function of the
 * backups' points in time: last, hourly, daily and ISO-weekly buckets in UTC, newest per bucket,
 * a backup kept by any rule kept.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pruneSelection } from '@warren/control-plane';

const none = { keepLast: 1, keepHourly: 0, keepDaily: 0, keepWeekly: 0 };
const b = (id: string, at: string) => ({ id, at });

describe('backup retention', () => {
  test('keepLast keeps the newest N by point in time, whatever the input order', () => {
    const all = [
      b('c', '2026-03-03T00:00:00Z'),
      b('a', '2026-03-01T00:00:00Z'),
      b('b', '2026-03-02T00:00:00Z'),
    ];
    assert.deepEqual(pruneSelection(all, { ...none, keepLast: 2 }), ['a']);
    assert.deepEqual(pruneSelection(all, { ...none, keepLast: 5 }), []);
  });

  test('hourly and daily keep the newest of each of the last N buckets that have one', () => {
    const all = [
      b('h9a', '2026-03-02T09:05:00Z'),
      b('h9b', '2026-03-02T09:55:00Z'),
      b('h7', '2026-03-02T07:30:00Z'),
      b('d1', '2026-03-01T23:59:59Z'),
      b('d0', '2026-02-28T12:00:00Z'),
    ];
    // Newest (h9b) by last; hours 09 and 07 (08 has none): h9b, h7.
    assert.deepEqual(pruneSelection(all, { ...none, keepHourly: 2 }).sort(), ['d0', 'd1', 'h9a']);
    // Days 03-02, 03-01: h9b and d1.
    assert.deepEqual(pruneSelection(all, { ...none, keepDaily: 2 }).sort(), ['d0', 'h7', 'h9a']);
    // Rules add up.
    assert.deepEqual(pruneSelection(all, { ...none, keepHourly: 2, keepDaily: 3 }).sort(), ['h9a']);
  });

  test('weekly buckets are ISO weeks (Monday to Sunday, UTC), across a year boundary', () => {
    const all = [
      b('mon', '2026-01-05T00:00:00Z'), // week 2026-W02
      b('sun', '2026-01-04T23:00:00Z'), // 2026-W01 (its Thursday is Jan 1)
      b('wed', '2025-12-31T10:00:00Z'), // 2026-W01 as well
      b('old', '2025-12-28T10:00:00Z'), // 2025-W52
    ];
    assert.deepEqual(pruneSelection(all, { ...none, keepWeekly: 2 }).sort(), ['old', 'wed']);
    assert.deepEqual(pruneSelection(all, { ...none, keepWeekly: 3 }), ['wed']);
  });

  test('a time-zone offset in the input is the same instant: buckets are UTC', () => {
    // x is 2026-03-01T23:30Z, older than y although its text sorts after y's; the same UTC day.
    const all = [b('x', '2026-03-02T01:30:00+02:00'), b('y', '2026-03-01T23:45:00Z')];
    assert.deepEqual(pruneSelection(all, { ...none, keepLast: 1, keepDaily: 1 }), ['x']);
  });
});
