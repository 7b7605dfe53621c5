import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rm, unlink } from 'node:fs/promises';
import type { ServerHttp2Stream } from 'node:http2';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import {
  type FileStat,
  GuestPath,
  MkdirRequest,
  parseOrThrow,
  RemoveRequest,
  WarrenError,
} from '@warren/protocol/guest';
import { readJsonBody, sendJson } from './respond.ts';

export function pathParam(query: URLSearchParams): string {
  return parseOrThrow(GuestPath, query.get('path') ?? '');
}

export async function statPath(path: string): Promise<FileStat> {
  const st = await lstat(path);
  return {
    name: basename(path) || '/',
    path,
    type: st.isFile() ? 'file' : st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'other',
    size: st.size,
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    mtimeMs: st.mtimeMs,
  };
}

export async function handleStat(stream: ServerHttp2Stream, query: URLSearchParams): Promise<void> {
  sendJson(stream, 200, await statPath(pathParam(query)));
}

export async function handleList(stream: ServerHttp2Stream, query: URLSearchParams): Promise<void> {
  const dir = pathParam(query);
  const names = await readdir(dir);
  const entries: FileStat[] = [];
  for (const name of names.sort()) {
    try {
      entries.push(await statPath(join(dir, name)));
    } catch {
      // Entry vanished between readdir and lstat: skip it.
    }
  }
  sendJson(stream, 200, { entries });
}

export async function handleRead(stream: ServerHttp2Stream, query: URLSearchParams): Promise<void> {
  const path = pathParam(query);
  const handle = await open(path, 'r');
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new WarrenError('FILE_ERROR', `EISDIR: ${path} is not a regular file`);
    stream.respond({ ':status': 200, 'content-type': 'application/octet-stream', 'content-length': st.size });
    await pipeline(
      createReadStream('', { fd: handle.fd, autoClose: false, highWaterMark: 256 * 1024 }),
      stream,
    );
  } finally {
    await handle.close();
  }
}

/**
 * Writes atomically: the body goes to a temporary file beside the target, which is renamed
 * over it only when the whole body arrived, so a cut connection never leaves half a file.
 */
export async function handleWrite(stream: ServerHttp2Stream, query: URLSearchParams): Promise<void> {
  const path = pathParam(query);
  const modeText = query.get('mode');
  const mode = modeText === null ? 0o644 : Number.parseInt(modeText, 8);
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new WarrenError('INVALID_ARGUMENT', 'mode must be octal between 0 and 7777');
  }
  if (query.get('parents') === 'true') await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.warren-${randomBytes(6).toString('hex')}`);
  const hash = createHash('sha256');
  let size = 0;
  try {
    await pipeline(
      stream,
      async function* (source: AsyncIterable<Buffer>) {
        for await (const chunk of source) {
          hash.update(chunk);
          size += chunk.length;
          yield chunk;
        }
      },
      createWriteStream(tmp, { mode, flags: 'wx' }),
    );
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  sendJson(stream, 200, { size, sha256: hash.digest('hex') });
}

export async function handleMkdir(stream: ServerHttp2Stream): Promise<void> {
  const req = parseOrThrow(MkdirRequest, await readJsonBody(stream));
  await mkdir(req.path, { recursive: req.parents, ...(req.mode === undefined ? {} : { mode: req.mode }) });
  sendJson(stream, 200, await statPath(req.path));
}

export async function handleRemove(stream: ServerHttp2Stream): Promise<void> {
  const req = parseOrThrow(RemoveRequest, await readJsonBody(stream));
  if (req.path === '/') throw new WarrenError('INVALID_ARGUMENT', 'refusing to remove /');
  await lstat(req.path);
  await rm(req.path, { recursive: req.recursive, force: false });
  sendJson(stream, 200, { removed: req.path });
}
