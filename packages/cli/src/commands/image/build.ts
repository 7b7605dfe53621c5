import { Profile, parseOrThrow } from '@warren/protocol';
import { HostAgentClient } from '@warren/sdk';
import { emit } from '../../output.ts';

export const usage =
  'warren image build [--profile minimal|standard] [--force] [--json]   (the host agent on this machine builds it; root)';

/** Progress goes to stderr; stdout is the image id (or, with --json, the build result). */
export async function run(args: { profile?: string; force?: boolean; json?: boolean }): Promise<number> {
  const profile = parseOrThrow(Profile, args.profile ?? 'standard');
  const started = performance.now();
  let lastStep = 0;
  const result = await new HostAgentClient().buildImage(
    { profile, force: args.force ?? false },
    {
      onProgress: (p) => {
        if (p.step !== lastStep) {
          lastStep = p.step;
          process.stderr.write(`[${p.step}/${p.steps}] ${p.title}\n`);
        } else if (p.detail) process.stderr.write(`      ${p.detail.slice(0, 160)}\n`);
      },
    },
  );
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  process.stderr.write(
    result.cached
      ? `cache hit: recipe ${result.recipeDigest.slice(0, 12)} already built (${seconds} s)\n`
      : `built ${profile} image in ${seconds} s\n`,
  );
  emit(args.json ?? false, { ...result, seconds: Number(seconds) }, () =>
    process.stdout.write(`${result.imageId}\n`),
  );
  return 0;
}
