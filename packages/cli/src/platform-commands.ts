/**
 * The commands that run Warren's daemons: `warren-platform` (apps/platform) implements them,
 * and `warren` hands them over to it by name (bin/warren has the same names). Their
 * usage lines live here so `warren --help` lists them without loading apps/.
 */
export const PLATFORM_COMMANDS = {
  up: 'warren up [--profile minimal|standard] [--json]   (runs the control plane and a host agent on this machine in the foreground)',
  'control-plane': 'warren control-plane   (runs the control plane daemon in the foreground)',
  'host-agent': 'warren host-agent   (runs the host agent daemon in the foreground)',
  'rotate-master-key':
    'warren rotate-master-key --new-key-file PATH [--json]   (with the control plane stopped: rewraps every key WARREN_MASTER_KEY_FILE wraps with the key in PATH, made when absent)',
} as const;
export type PlatformCommand = keyof typeof PLATFORM_COMMANDS;

export function isPlatformCommand(word: string | undefined): word is PlatformCommand {
  return word !== undefined && Object.hasOwn(PLATFORM_COMMANDS, word);
}
