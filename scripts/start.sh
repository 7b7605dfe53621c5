#!/usr/bin/env bash
# `npm start`: installs what is missing, builds the default image if there is none (with
# progress), then runs the whole platform on this machine in the foreground (`warren up`):
# the control plane and a host agent, with embedded defaults (SQLite, local directories).
#   WARREN_DATA_DIR   state directory (default /var/lib/warren); survives restarts
#   WARREN_API_PORT   API port (default 7070); WARREN_API_HOST to listen beyond loopback
#   WARREN_PROFILE    image profile to build and use by default (default standard)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
# `warren` on PATH for the operator's other shells, unless another warren is there already
# (bin/warren.mjs was the CLI's entry before it became bin/warren).
if [ "$(id -u)" -eq 0 ] && [ -d /usr/local/bin ]; then
  link=/usr/local/bin/warren
  target="$(readlink -f "$link" 2>/dev/null || true)"
  if [ ! -e "$link" ] || [ "$target" = "$root/packages/cli/bin/warren" ] || [ "$target" = "$root/packages/cli/bin/warren.mjs" ]; then
    ln -sfn "$root/packages/cli/bin/warren" "$link"
  else
    echo "warren: $link is another program; use $root/node_modules/.bin/warren" >&2
  fi
fi
profile="${WARREN_PROFILE:-standard}"
export WARREN_DEFAULT_PROFILE="${WARREN_DEFAULT_PROFILE:-$profile}"
# tini reaps QEMUs that outlive a host-agent restart and get re-parented here. `up --profile`
# first builds that image if there is none (a cache hit otherwise; each step printed as it goes).
exec tini -s -- node_modules/.bin/warren up --profile "$profile"
