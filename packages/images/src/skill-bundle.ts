/**
 * Skill bundles: a skill package directory as a deterministic ustar archive, named by its
 * sha256. The same directory always packs to the same bytes (entries sorted by path, mtime 0,
 * owner 0:0 without names, modes normalised to 0755/0644), so the digest names the content.
 *
 * The CLI packs (`warren skill push`), the control plane reads (validates before it stores) and
 * the host agent unpacks (validates again, after checking the digest) with this one module, so
 * all three apply the same rules and the limits of `SKILL_BUNDLE_LIMITS`:
 * - only directories, regular files and symlinks; no device, FIFO or socket;
 * - no absolute path, no `..`, no empty segment; a symlink's target stays inside the package;
 * - the top level holds only skill folders, each with a regular `SKILL.md` (OpenClaw's format).
 */
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { SKILL_BUNDLE_LIMITS, WarrenError } from '@warren/protocol';

const BLOCK = 512;

export interface BundleEntry {
  /** Relative path inside the package, `/`-separated, no trailing slash. */
  path: string;
  type: 'dir' | 'file' | 'symlink';
  /** 0o755 or 0o644 (files), 0o755 (directories), 0o777 (symlinks). */
  mode: number;
  /** File contents (files only). */
  data?: Buffer;
  /** Symlink target (symlinks only). */
  target?: string;
}

export interface ReadBundle {
  entries: BundleEntry[];
  /** The skill folders at the top level, sorted. */
  skills: string[];
}

function invalid(message: string): WarrenError {
  return new WarrenError('INVALID_ARGUMENT', `skill package refused: ${message}`);
}

/** `sha256:<hex>` of a bundle's bytes. */
export function skillBundleDigest(bundle: Buffer): string {
  return `sha256:${createHash('sha256').update(bundle).digest('hex')}`;
}

function checkPath(path: string): void {
  if (Buffer.byteLength(path) > SKILL_BUNDLE_LIMITS.maxPathBytes)
    throw invalid(
      `path ${JSON.stringify(path.slice(0, 80))} is longer than ${SKILL_BUNDLE_LIMITS.maxPathBytes} bytes`,
    );
  if (path === '' || path.startsWith('/') || path.includes('\0'))
    throw invalid(`path ${JSON.stringify(path.slice(0, 80))} is not a relative path`);
  for (const seg of path.split('/'))
    if (seg === '' || seg === '.' || seg === '..')
      throw invalid(`path ${JSON.stringify(path.slice(0, 80))} has an empty, . or .. segment`);
}

/** A symlink's target must resolve inside the package (relative, never above its root). */
function checkLinkTarget(path: string, target: string): void {
  if (target === '' || target.startsWith('/') || target.includes('\0'))
    throw invalid(`symlink ${path} points outside the package (${JSON.stringify(target.slice(0, 80))})`);
  const resolved = posix.normalize(posix.join(posix.dirname(path), target));
  if (resolved === '..' || resolved.startsWith('../') || posix.isAbsolute(resolved))
    throw invalid(`symlink ${path} points outside the package (${JSON.stringify(target.slice(0, 80))})`);
}

/** The structural rules every bundle follows, whoever made it. */
function checkEntries(entries: BundleEntry[]): string[] {
  if (entries.length > SKILL_BUNDLE_LIMITS.maxEntries)
    throw invalid(`more than ${SKILL_BUNDLE_LIMITS.maxEntries} entries`);
  const byPath = new Map<string, BundleEntry>();
  for (const e of entries) {
    checkPath(e.path);
    if (byPath.has(e.path)) throw invalid(`${e.path} appears twice`);
    byPath.set(e.path, e);
    if (e.type === 'symlink') checkLinkTarget(e.path, e.target ?? '');
    const parent = posix.dirname(e.path);
    if (parent !== '.' && byPath.get(parent)?.type !== 'dir')
      throw invalid(`${e.path} comes before (or without) its directory ${parent}`);
  }
  const skills: string[] = [];
  for (const e of entries) {
    if (e.path.includes('/')) continue;
    if (e.type !== 'dir')
      throw invalid(
        `${e.path} is at the top level: a package holds only skill folders (each with a SKILL.md)`,
      );
    if (byPath.get(`${e.path}/SKILL.md`)?.type !== 'file')
      throw invalid(`skill folder ${e.path} has no SKILL.md file`);
    skills.push(e.path);
  }
  if (skills.length === 0) throw invalid('no skill folder (a folder with a SKILL.md) at the top level');
  if (skills.length > SKILL_BUNDLE_LIMITS.maxSkills)
    throw invalid(`more than ${SKILL_BUNDLE_LIMITS.maxSkills} skill folders`);
  return skills.sort();
}

/** Reads a package directory from disk into sorted entries (symlinks are not followed). */
async function walk(root: string): Promise<BundleEntry[]> {
  const out: BundleEntry[] = [];
  let bytes = 0;
  const visit = async (rel: string): Promise<void> => {
    const names = (await readdir(rel ? join(root, rel) : root)).sort();
    for (const name of names) {
      const path = rel ? `${rel}/${name}` : name;
      const st = await lstat(join(root, path));
      if (st.isDirectory()) {
        out.push({ path, type: 'dir', mode: 0o755 });
        await visit(path);
      } else if (st.isFile()) {
        bytes += st.size;
        if (bytes > SKILL_BUNDLE_LIMITS.maxBytes)
          throw invalid(`the files add up to more than ${SKILL_BUNDLE_LIMITS.maxBytes} bytes`);
        out.push({
          path,
          type: 'file',
          mode: st.mode & 0o111 ? 0o755 : 0o644,
          data: await readFile(join(root, path)),
        });
      } else if (st.isSymbolicLink()) {
        out.push({ path, type: 'symlink', mode: 0o777, target: await readlink(join(root, path)) });
      } else {
        throw invalid(`${path} is not a file, directory or symlink (devices, FIFOs and sockets are refused)`);
      }
      if (out.length > SKILL_BUNDLE_LIMITS.maxEntries)
        throw invalid(`more than ${SKILL_BUNDLE_LIMITS.maxEntries} entries`);
    }
  };
  await visit('');
  return out;
}

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, '0')}\0`;
}

function header(e: BundleEntry): Buffer {
  const h = Buffer.alloc(BLOCK);
  const full = e.type === 'dir' ? `${e.path}/` : e.path;
  let name = full;
  let prefix = '';
  if (Buffer.byteLength(full) > 100) {
    // ustar: the path splits at a `/` into prefix (155) and name (100).
    const cut = full.lastIndexOf('/', full.length - 2);
    prefix = full.slice(0, cut);
    name = full.slice(cut + 1);
    if (cut <= 0 || Buffer.byteLength(name) > 100 || Buffer.byteLength(prefix) > 155)
      throw invalid(`path ${JSON.stringify(full.slice(0, 80))} cannot be stored in a ustar header`);
  }
  h.write(name, 0, 100);
  h.write(octal(e.mode, 8), 100);
  h.write(octal(0, 8), 108);
  h.write(octal(0, 8), 116);
  h.write(octal(e.type === 'file' ? e.data!.length : 0, 12), 124);
  h.write(octal(0, 12), 136);
  h.write('        ', 148);
  h.write(e.type === 'file' ? '0' : e.type === 'dir' ? '5' : '2', 156);
  if (e.type === 'symlink') {
    if (Buffer.byteLength(e.target!) > 100)
      throw invalid(`symlink ${e.path}'s target is longer than 100 bytes`);
    h.write(e.target!, 157, 100);
  }
  h.write('ustar\0', 257);
  h.write('00', 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return h;
}

/** Packs entries (already sorted and checked) into the bundle's bytes. */
function pack(entries: BundleEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    parts.push(header(e));
    if (e.type === 'file') {
      parts.push(e.data!);
      const pad = (BLOCK - (e.data!.length % BLOCK)) % BLOCK;
      if (pad) parts.push(Buffer.alloc(pad));
    }
  }
  parts.push(Buffer.alloc(BLOCK * 2));
  const out = Buffer.concat(parts);
  if (out.length > SKILL_BUNDLE_LIMITS.maxBytes)
    throw invalid(`the bundle is larger than ${SKILL_BUNDLE_LIMITS.maxBytes} bytes`);
  return out;
}

/** Packs a skill package directory deterministically; refuses one that breaks the rules. */
export async function packSkillDir(
  dir: string,
): Promise<{ bundle: Buffer; digest: string; skills: string[] }> {
  const st = await lstat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw invalid(`${dir} is not a directory`);
  const entries = await walk(dir);
  const skills = checkEntries(entries);
  const bundle = pack(entries);
  return { bundle, digest: skillBundleDigest(bundle), skills };
}

function field(h: Buffer, offset: number, length: number): string {
  const raw = h.subarray(offset, offset + length);
  const end = raw.indexOf(0);
  return raw.subarray(0, end < 0 ? length : end).toString('utf8');
}

function parseOctal(h: Buffer, offset: number, length: number, what: string): number {
  const s = field(h, offset, length).trim();
  if (!/^[0-7]{1,11}$/.test(s)) throw invalid(`bad ${what} field in a header`);
  return Number.parseInt(s, 8);
}

/**
 * Parses and checks a bundle (anyone's bytes: a client's upload, or a cache file whose digest
 * was verified). Refuses anything `packSkillDir` would not have made, structurally.
 */
export function readSkillBundle(bundle: Buffer): ReadBundle {
  if (bundle.length > SKILL_BUNDLE_LIMITS.maxBytes)
    throw invalid(`the bundle is larger than ${SKILL_BUNDLE_LIMITS.maxBytes} bytes`);
  if (bundle.length % BLOCK !== 0) throw invalid('not a tar archive (its length is not a multiple of 512)');
  const entries: BundleEntry[] = [];
  let at = 0;
  for (;;) {
    if (at + BLOCK > bundle.length) throw invalid('the archive ends without its end marker');
    const h = bundle.subarray(at, at + BLOCK);
    if (h.every((b) => b === 0)) break;
    if (field(h, 257, 6) !== 'ustar') throw invalid('not a ustar archive');
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
    if (sum !== parseOctal(h, 148, 8, 'checksum')) throw invalid('a header checksum does not match');
    const prefix = field(h, 345, 155);
    const rawName = field(h, 0, 100);
    const full = prefix ? `${prefix}/${rawName}` : rawName;
    const flag = String.fromCharCode(h[156]!);
    const size = parseOctal(h, 124, 12, 'size');
    const mode = parseOctal(h, 100, 8, 'mode');
    at += BLOCK;
    if (flag === '5') {
      entries.push({ path: full.replace(/\/$/, ''), type: 'dir', mode: 0o755 });
      if (size !== 0) throw invalid(`directory ${full} has a size`);
    } else if (flag === '0' || flag === '\0') {
      if (at + size > bundle.length) throw invalid(`${full} is cut short`);
      entries.push({
        path: full,
        type: 'file',
        mode: mode & 0o111 ? 0o755 : 0o644,
        data: Buffer.from(bundle.subarray(at, at + size)),
      });
      at += Math.ceil(size / BLOCK) * BLOCK;
    } else if (flag === '2') {
      if (size !== 0) throw invalid(`symlink ${full} has a size`);
      entries.push({ path: full, type: 'symlink', mode: 0o777, target: field(h, 157, 100) });
    } else {
      throw invalid(
        `${full} has tar type ${JSON.stringify(flag)}: only files, directories and symlinks are allowed`,
      );
    }
    if (entries.length > SKILL_BUNDLE_LIMITS.maxEntries)
      throw invalid(`more than ${SKILL_BUNDLE_LIMITS.maxEntries} entries`);
  }
  const skills = checkEntries(entries);
  return { entries, skills };
}

/**
 * Writes a checked bundle's entries under `dest` (an empty directory the caller made), with
 * the normalised modes; the caller owns `dest` (root, on the host), so the files are root's.
 */
export async function unpackSkillBundle(bundle: Buffer, dest: string): Promise<ReadBundle> {
  const read = readSkillBundle(bundle);
  for (const e of read.entries) {
    const path = join(dest, ...e.path.split('/'));
    // Modes set explicitly: the host agent runs under umask 077, and the guest's workspace user
    // must be able to read what the image holds.
    if (e.type === 'dir') {
      await mkdir(path);
      await chmod(path, 0o755);
    } else if (e.type === 'file') {
      await writeFile(path, e.data!, { flag: 'wx' });
      await chmod(path, e.mode);
    } else await symlink(e.target!, path);
  }
  return read;
}
