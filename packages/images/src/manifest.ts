import { Profile } from '@warren/protocol';
import { z } from 'zod';

export { PROFILES, Profile } from '@warren/protocol';

const Digest = z.string().regex(/^[0-9a-f]{64}$/, 'a sha256 digest is 64 lowercase hex digits');
const Blob = z.strictObject({ digest: Digest, size: z.number().int().nonnegative() });

/**
 * What an image is. The image id is the sha256 of this document's canonical JSON, so the
 * id pins every byte the VM will run: kernel, initramfs, root filesystem, guest agent.
 */
export const ImageManifest = z.strictObject({
  schemaVersion: z.literal(1),
  profile: Profile,
  recipe: z.strictObject({ version: z.number().int(), digest: Digest }),
  kernel: Blob.extend({ release: z.string(), package: z.string() }),
  initrd: Blob,
  rootfs: Blob.extend({ format: z.literal('ext4') }),
  guestAgent: z.strictObject({ version: z.string(), digest: Digest }),
  node: z.strictObject({ version: z.string() }),
  /** Kernel command line arguments the image needs (the VMM adds console and per-VM ones). */
  cmdline: z.string(),
});
export type ImageManifest = z.infer<typeof ImageManifest>;

export const IMAGE_ID_PREFIX = 'sha256:';
