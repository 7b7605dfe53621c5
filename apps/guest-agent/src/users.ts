import { readFile } from 'node:fs/promises';
import { WarrenError } from '@warren/protocol/guest';

export interface GuestUser {
  uid: number;
  gid: number;
  name: string;
  home: string;
}

/** Resolves a user name or uid through the guest's /etc/passwd (no NSS in a minimal guest). */
export async function resolveUser(user: string | number, passwdPath = '/etc/passwd'): Promise<GuestUser> {
  let text = '';
  try {
    text = await readFile(passwdPath, 'utf8');
  } catch {
    // No passwd file: only numeric uids can be used.
  }
  for (const line of text.split('\n')) {
    const [name, , uid, gid, , home] = line.split(':');
    if (!name || uid === undefined || gid === undefined) continue;
    if (name === user || Number(uid) === user) {
      return { name, uid: Number(uid), gid: Number(gid), home: home || '/' };
    }
  }
  if (typeof user === 'number') return { name: String(user), uid: user, gid: user, home: '/' };
  throw new WarrenError('EXEC_FAILED', `no user ${JSON.stringify(user)} in the guest`);
}
