/**
 * Debian's Chromium for the browser tests (playwright-core drives it; no browser download).
 * One set of flags: no sandbox (tests run as root), no GPU, and nothing that reaches out to the
 * network on its own.
 */
import { existsSync } from 'node:fs';
import { type Browser, type BrowserContext, chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
}

/** A browser with its own profile directory (the caller makes and removes it). */
export function launchChromiumProfile(dir: string): Promise<BrowserContext> {
  return chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: ARGS });
}

/** A browser test's skip reason when Chromium is not installed; false when it is. */
export const CHROMIUM_MISSING: string | false = existsSync(CHROMIUM)
  ? false
  : `${CHROMIUM} is missing: run scripts/install-deps.sh as root`;
