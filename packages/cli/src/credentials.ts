import { readFile } from 'node:fs/promises';
import { type CreateTenantSessionRequest, MAX_CREDENTIAL_BYTES, WarrenError } from '@warren/protocol';

/**
 * `--secret KEY=@FILE` (a file KEY in the guest's credentials directory) and
 * `--secret-env KEY=@FILE` (an environment variable KEY of every command in the session),
 * each holding FILE's content. A value on the command line itself is refused: it would be in
 * the shell's history and in every process listing.
 */
export async function readSecrets(
  files: string[] | undefined,
  env: string[] | undefined,
): Promise<Pick<CreateTenantSessionRequest, 'files' | 'env'>> {
  const out: { files: Record<string, string>; env: Record<string, string> } = { files: {}, env: {} };
  let total = 0;
  for (const [flag, specs, into] of [
    ['--secret', files ?? [], out.files],
    ['--secret-env', env ?? [], out.env],
  ] as const) {
    for (const spec of specs) {
      const m = /^([^=]+)=@(.+)$/.exec(spec);
      if (!m) {
        throw new WarrenError(
          'INVALID_ARGUMENT',
          // Never echo the argument: it may be the secret itself.
          `${flag} takes KEY=@FILE (the secret is read from FILE), got ${spec.includes('=') ? `${spec.split('=')[0]!.slice(0, 64)}=<a value>` : 'no ='}; a value on the command line would be in shell history and process listings`,
        );
      }
      const [, name, file] = m as unknown as [string, string, string];
      if (Object.hasOwn(into, name))
        throw new WarrenError('INVALID_ARGUMENT', `${flag} ${name} is given twice`);
      let bytes: Buffer;
      try {
        bytes = await readFile(file);
      } catch (e) {
        throw new WarrenError(
          'INVALID_ARGUMENT',
          `${flag} ${name}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? e})`,
        );
      }
      total += bytes.length;
      if (total > MAX_CREDENTIAL_BYTES) {
        throw new WarrenError(
          'PAYLOAD_TOO_LARGE',
          `secrets are limited to ${MAX_CREDENTIAL_BYTES} bytes in all; ${file} takes them over`,
        );
      }
      into[name] = flag === '--secret' ? fileValue(bytes) : envValue(bytes, name);
    }
  }
  return {
    ...(Object.keys(out.files).length ? { files: out.files } : {}),
    ...(Object.keys(out.env).length ? { env: out.env } : {}),
  };
}

/** Text as it is; anything else (or text that looks like the marker) as `base64:…`. */
function fileValue(bytes: Buffer): string {
  const text = bytes.toString('utf8');
  if (Buffer.from(text, 'utf8').equals(bytes) && !text.startsWith('base64:')) return text;
  return `base64:${bytes.toString('base64')}`;
}

/** An environment value is text; one trailing newline (as editors and `echo` leave) is dropped. */
function envValue(bytes: Buffer, name: string): string {
  const text = bytes.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(bytes) || text.includes('\0')) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `--secret-env ${name}: the file is not text; use --secret for binary secrets`,
    );
  }
  return text.replace(/\r?\n$/, '');
}
