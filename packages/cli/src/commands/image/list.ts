import { HostAgentClient } from '@warren/sdk';
import { emit, table } from '../../output.ts';

export const usage = 'warren image list [--json]   (asks the host agent on this machine; root)';

export async function run(args: { json?: boolean }): Promise<number> {
  const images = await new HostAgentClient().listImages();
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
