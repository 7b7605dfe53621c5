/**
 * What the store keeps and `GET /v1/keys` lists of a token is its kind prefix and a fixed
 * number of characters of its body, whatever the body holds. The body is base64url, whose
 * alphabet has `_`: a prefix cut at the last `_` (as before issue 9) kept most of the token.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DISPLAY_BODY_CHARS, displayPrefix, newToken, TOKEN_PREFIX } from '@warren/control-plane';

const KINDS = Object.keys(TOKEN_PREFIX) as (keyof typeof TOKEN_PREFIX)[];

function assertSafe(kind: keyof typeof TOKEN_PREFIX, token: string): void {
  const shown = displayPrefix(kind, token);
  const kindPrefix = TOKEN_PREFIX[kind];
  assert.equal(shown.length, kindPrefix.length + DISPLAY_BODY_CHARS, `${token} shows ${shown}`);
  assert.equal(
    shown,
    `${kindPrefix}${token.slice(kindPrefix.length, kindPrefix.length + DISPLAY_BODY_CHARS)}`,
  );
}

test('tokens whose body has `_` in every position show no more than the kind prefix and 6 characters', () => {
  for (const kind of KINDS) {
    for (let at = 0; at < 43; at++) {
      const body = `${'A'.repeat(at)}_${'b'.repeat(42 - at)}`;
      assertSafe(kind, `${TOKEN_PREFIX[kind]}${body}`);
    }
    // The worst case of the old cut: `_` as the last character of the body.
    assertSafe(kind, `${TOKEN_PREFIX[kind]}${'x-'.repeat(21)}_`);
  }
});

test('10,000 generated tokens of each kind: the shown prefix never exceeds the kind prefix and 6 characters', () => {
  let withUnderscore = 0;
  for (const kind of KINDS) {
    for (let i = 0; i < 10_000; i++) {
      const token = newToken(kind);
      if (token.slice(TOKEN_PREFIX[kind].length).includes('_')) withUnderscore++;
      assertSafe(kind, token);
    }
  }
  // About 49% of bodies have a `_`; the run covers the case the old cut got wrong.
  assert.ok(withUnderscore > 1000, `only ${withUnderscore} tokens had a _ in the body`);
});
