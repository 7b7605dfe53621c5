import { randomBytes } from 'node:crypto';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { HostId, WarrenError } from '@warren/protocol';
import { z } from 'zod';
import type { HostAgentConfig } from '../config.ts';

/** What joining a control plane gave this host; it outlives agent restarts. */
export const Credentials = z.object({
  controlPlaneUrl: z.string(),
  hostId: HostId,
  /** Authenticates this agent's heartbeats. */
  token: z.string().min(1),
  /** Authenticates the control plane on this agent's remote API. */
  agentToken: z.string().min(32),
});
export type Credentials = z.infer<typeof Credentials>;

export function credentialsPathOf(dataDir: string): string {
  return join(dataDir, 'control-plane.json');
}

/** `http://cp:8080/` and `http://cp:8080` are one control plane. */
export function sameControlPlane(a: string, b: string): boolean {
  return new URL(a).href.replace(/\/+$/, '') === new URL(b).href.replace(/\/+$/, '');
}

/** 32 random bytes, base64url. */
export function newAgentToken(): string {
  return randomBytes(32).toString('base64url');
}

/**
 * The saved credentials, or undefined when there are none (or unusable ones, which a new
 * join replaces).
 */
export async function loadCredentials(dataDir: string): Promise<Credentials | undefined> {
  const text = await readFile(credentialsPathOf(dataDir), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    return Credentials.parse(JSON.parse(text));
  } catch {
    return undefined;
  }
}

/** Written to a 0600 temporary file and renamed, so a crash leaves either the old or the new file. */
export async function saveCredentials(dataDir: string, credentials: Credentials): Promise<void> {
  const path = credentialsPathOf(dataDir);
  const tmp = `${path}.tmp`;
  await rm(tmp, { force: true });
  const file = await open(tmp, 'wx', 0o600);
  try {
    await file.writeFile(`${JSON.stringify(credentials, null, 2)}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(tmp, path);
}

/** WARREN_JOIN_TOKEN, else the content of WARREN_JOIN_TOKEN_FILE; undefined when neither is set. */
export async function resolveJoinToken(config: HostAgentConfig): Promise<string | undefined> {
  if (config.joinToken) return config.joinToken;
  if (!config.joinTokenFile) return undefined;
  let text: string;
  try {
    text = await readFile(config.joinTokenFile, 'utf8');
  } catch (e) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `WARREN_JOIN_TOKEN_FILE: cannot read ${config.joinTokenFile}: ${(e as Error).message}`,
    );
  }
  const token = text.trim();
  if (!token)
    throw new WarrenError('INVALID_ARGUMENT', `WARREN_JOIN_TOKEN_FILE: ${config.joinTokenFile} is empty`);
  return token;
}
