/**
 * Where the CLI finds the control plane and its credential, in this order for each:
 * --api-url / --token, then WARREN_API_URL / WARREN_TOKEN, then the files a local `warren up`
 * writes under `${WARREN_DATA_DIR:-/var/lib/warren}/control-plane/`.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WarrenError } from '@warren/protocol';
import { nodeFetch, WarrenClient } from '@warren/sdk';

export interface ConnectionFlags {
  'api-url'?: string | undefined;
  token?: string | undefined;
}

export type Source = 'flag' | 'env' | 'local';

export interface Connection {
  url: string;
  token: string;
  urlSource: Source;
  tokenSource: Source;
}

export interface LocalFiles {
  dataDir: string;
  /** `{"url": "http://127.0.0.1:7070"}`, written by the control plane once it listens. */
  apiJson: string;
  /** The admin token (root-only). */
  adminToken: string;
  /** What host agents present to join. */
  joinToken: string;
}

export function localFiles(env: NodeJS.ProcessEnv = process.env): LocalFiles {
  const dataDir = env.WARREN_DATA_DIR || '/var/lib/warren';
  const dir = join(dataDir, 'control-plane');
  return {
    dataDir,
    apiJson: join(dir, 'api.json'),
    adminToken: join(dir, 'admin-token'),
    joinToken: join(dir, 'join-token'),
  };
}

/** The URL the local control plane announced, or undefined when none runs here. */
export async function readLocalUrl(files: LocalFiles): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(files.apiJson, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `cannot read ${files.apiJson} (${code ?? e}) to find the local control plane; run as a user who can, or pass --api-url / set WARREN_API_URL`,
    );
  }
  let url: unknown;
  try {
    url = (JSON.parse(text) as { url?: unknown }).url;
  } catch {
    url = undefined;
  }
  if (typeof url !== 'string' || url === '') {
    throw new WarrenError(
      'INTERNAL',
      `${files.apiJson} does not hold {"url": "http://…"}; restart \`warren up\`, or pass --api-url`,
    );
  }
  return url;
}

function sameUrl(a: string, b: string): boolean {
  const norm = (s: string) => {
    try {
      return new URL(s).href.replace(/\/+$/, '');
    } catch {
      return s;
    }
  };
  return norm(a) === norm(b);
}

export async function resolveConnection(
  flags: ConnectionFlags,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Connection> {
  const files = localFiles(env);
  let url: string | undefined;
  let urlSource: Source = 'flag';
  if (flags['api-url']) url = flags['api-url'];
  else if (env.WARREN_API_URL) [url, urlSource] = [env.WARREN_API_URL, 'env'];
  const localUrl =
    url === undefined ? await readLocalUrl(files) : await readLocalUrl(files).catch(() => undefined);
  if (url === undefined) {
    if (localUrl === undefined) {
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `no Warren API URL: pass --api-url URL, set WARREN_API_URL, or run \`warren up\` on this machine (it writes ${files.apiJson})`,
      );
    }
    [url, urlSource] = [localUrl, 'local'];
  }

  if (flags.token) return { url, token: flags.token, urlSource, tokenSource: 'flag' };
  if (env.WARREN_TOKEN) return { url, token: env.WARREN_TOKEN, urlSource, tokenSource: 'env' };
  // The local admin token only ever goes to the local control plane: sending it to whatever
  // --api-url names would hand the platform's master key to another server.
  if (localUrl === undefined || !sameUrl(url, localUrl)) {
    throw new WarrenError(
      'UNAUTHENTICATED',
      `no API token for ${url}: pass --token TOKEN or set WARREN_TOKEN (an admin token or a tenant key from \`warren key create\`)`,
    );
  }
  let token: string;
  try {
    token = (await readFile(files.adminToken, 'utf8')).trim();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') {
      throw new WarrenError(
        'UNAUTHENTICATED',
        `cannot read the admin token ${files.adminToken}: permission denied (it is readable by root only); run the command as root (sudo -E warren …), or pass --token / set WARREN_TOKEN`,
      );
    }
    throw new WarrenError(
      'UNAUTHENTICATED',
      `no API token: ${files.adminToken} cannot be read (${code ?? e}); pass --token or set WARREN_TOKEN`,
    );
  }
  if (!token) {
    throw new WarrenError(
      'UNAUTHENTICATED',
      `the admin token file ${files.adminToken} is empty; restart \`warren up\`, or pass --token / set WARREN_TOKEN`,
    );
  }
  return { url, token, urlSource, tokenSource: 'local' };
}

/**
 * An SDK client for the control plane this invocation should talk to, over node:http rather
 * than the global fetch, whose first use costs a third of the CLI's start-up.
 */
export async function connect(
  flags: ConnectionFlags,
  env: NodeJS.ProcessEnv = process.env,
): Promise<WarrenClient> {
  const { url, token } = await resolveConnection(flags, env);
  return new WarrenClient({ url, token, fetch: nodeFetch() });
}
