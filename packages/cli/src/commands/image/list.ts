import { imagesDirOf, loadConfig } from '@warren/host-agent';
import { ImageStore } from '@warren/images';
import { emit, table } from '../../output.ts';

export const usage = 'warren image list [--json]';

export async function run(args: { json?: boolean }): Promise<number> {
  const store = new ImageStore(imagesDirOf(loadConfig()));
  const images = await store.list();
  emit(args.json ?? false, { images }, () =>
    table(
      images.map((i) => ({
        id: i.id,
        profile: i.profile,
        rootfs: `${Math.round(i.rootfsBytes / 1048576)} MiB`,
        agent: i.guestAgentVersion,
        kernel: i.kernelRelease,
        created: i.createdAt,
      })),
      ['id', 'profile', 'rootfs', 'agent', 'kernel', 'created'],
    ),
  );
  return 0;
}
