import { Profile, parseOrThrow } from '@warren/protocol';
import { idleTimeoutFlag, intFlag, oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { follow } from '../../lifecycle.ts';
import { configFlags } from '../../skill-flags.ts';

export const usage =
  'warren tenant create NAME [--image ID | --image-profile PROFILE] [--cpus N] [--memory MiB] [--disk MiB] [--idle-timeout 20s|15m|2h|never] [--skill NAME@VERSION|NAME@CHANNEL]... [--config FILE=JSON_PATH]... [--no-wait] [--json]';

/** Waits until the tenant runs (progress on stderr); stdout gets the new tenant's id. */
export async function run(
  args: ConnectionFlags & {
    image?: string;
    'image-profile'?: string;
    cpus?: string;
    memory?: string;
    disk?: string;
    'idle-timeout'?: string;
    skill?: string[];
    config?: string[];
    'no-wait'?: boolean;
    json?: boolean;
  },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const name = oneOperand(operands, 'tenant NAME', usage);
  const cpus = intFlag(args.cpus, '--cpus');
  const memory = intFlag(args.memory, '--memory');
  const disk = intFlag(args.disk, '--disk');
  const idleTimeout = idleTimeoutFlag(args['idle-timeout'], false);
  const config = await configFlags(args.config);
  const warren = await connect(args);
  const started = await warren.tenants.create({
    name,
    ...(args.image ? { image: args.image } : {}),
    ...(args['image-profile'] ? { imageProfile: parseOrThrow(Profile, args['image-profile']) } : {}),
    ...(cpus === undefined ? {} : { vcpus: cpus }),
    ...(memory === undefined ? {} : { memoryMiB: memory }),
    ...(disk === undefined ? {} : { diskMiB: disk }),
    ...(idleTimeout ? { idleTimeout } : {}),
    ...(args.skill?.length ? { skills: args.skill } : {}),
    ...(config ? { config } : {}),
  });
  const done = await follow(warren, started, 'creating', args);
  if (!args.json) process.stdout.write(`${done.tenant.id}\n`);
  return 0;
}
