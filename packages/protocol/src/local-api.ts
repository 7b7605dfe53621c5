/**
 * The host agent's local API (a root-only unix socket), as far as clients other than the agent
 * need it: where it listens, and the image routes' bodies. The CLI reaches the agent through
 * it, so it never opens the agent's data directory itself.
 */
import { z } from 'zod';

/** Where the local API listens unless WARREN_HOST_AGENT_SOCKET names another socket. */
export function defaultHostAgentSocket(dataDir: string): string {
  return `${dataDir}/host-agent.sock`;
}

/** The image profiles a host can build. */
export const PROFILES = ['minimal', 'standard', 'openclaw'] as const;
export const Profile = z.enum(PROFILES);
export type Profile = z.infer<typeof Profile>;

/** One image in a host's store, as `GET /v1/images` lists it (later fields may be added). */
export const StoredImage = z.looseObject({
  id: z.string(),
  profile: z.string(),
  createdAt: z.string(),
  rootfsBytes: z.number(),
  guestAgentVersion: z.string(),
  kernelRelease: z.string(),
});
export type StoredImage = z.infer<typeof StoredImage>;

/** `POST /v1/images/build`: builds an image of `profile` unless its recipe is cached (or `force`). */
export const ImageBuildRequest = z.strictObject({
  profile: Profile.default('standard'),
  force: z.boolean().default(false),
});
export type ImageBuildRequest = z.input<typeof ImageBuildRequest>;

/** A step of a build, streamed as `{"progress": …}` lines before the last line. */
export const ImageBuildProgress = z.object({
  step: z.number().int(),
  steps: z.number().int(),
  title: z.string(),
  /** A line of a long-running tool's output, if any. */
  detail: z.string().optional(),
});
export type ImageBuildProgress = z.infer<typeof ImageBuildProgress>;

/** The build's outcome, the stream's last line as `{"result": …}` (or `{"error": …}`). */
export const ImageBuildResult = z.looseObject({
  imageId: z.string(),
  cached: z.boolean(),
  recipeDigest: z.string(),
});
export type ImageBuildResult = z.infer<typeof ImageBuildResult>;
