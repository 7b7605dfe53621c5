/**
 * The changed-files list the CLI prints: file names come from the guest's filesystem, so a
 * hostile guest chooses them; none may reach the terminal as a control sequence.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { changeLines } from '../../packages/cli/src/sessions.ts';

test('a guest-chosen file name cannot send the terminal a control sequence', () => {
  // OSC 0 (window title), CSI clear screen, a newline forging a second entry, a C1 control.
  const hostile = '/workspace/a\x1b]0;pwned\x07\x1b[2J\nD root /etc/passwd\u009b';
  const lines = changeLines({
    since: 'session-base',
    truncated: false,
    changes: [{ disk: 'data', path: hostile, change: 'added', type: 'file' }],
  });
  assert.equal(lines.length, 1);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: looking for them is the test.
  assert.doesNotMatch(lines[0]!, /[\x00-\x1f\x7f-\x9f]/);
  assert.equal(lines[0], 'A data /workspace/a\\x1b]0;pwned\\x07\\x1b[2J\\x0aD root /etc/passwd\\x9b');
});

test('ordinary names print as they are; a backslash is escaped so escapes stay unambiguous', () => {
  const lines = changeLines({
    since: 's',
    truncated: true,
    changes: [
      { disk: 'root', path: '/etc/héllo wörld', change: 'modified', type: 'file' },
      { disk: 'data', path: '/workspace/a\\x1b', change: 'deleted', type: 'directory' },
    ],
  });
  assert.deepEqual(lines, ['M root /etc/héllo wörld', 'D data /workspace/a\\\\x1b/', '… and 0+ more']);
});
