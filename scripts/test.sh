#!/usr/bin/env bash
# `npm test`: installs what is missing, checks types and lint, then runs every test:
# unit tests (seconds) and VM tests that boot real QEMU microVMs (TCG here, KVM where the
# hardware allows). Pass test files to run only those: npm test -- test/unit/frames.test.ts
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
node_modules/.bin/tsc -p tsconfig.json --noEmit
node_modules/.bin/tsc -p apps/console/tsconfig.json
node_modules/.bin/biome check . >/dev/null || node_modules/.bin/biome check .
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(test/unit/*.test.ts test/api/*.test.ts test/browser/*.test.ts test/vm/*.test.ts test/net/*.test.ts)
# Safety net: a VM started by a test in this machine's own namespace never gets a NIC, so it
# can never reach the real network. test/net/ turns networking on inside its own namespaces.
export WARREN_NETWORK=off
# One file at a time: VM tests would otherwise fight over two cores under TCG.
exec scripts/node.sh --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
