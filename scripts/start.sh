#!/usr/bin/env bash
# `npm start`: installs what is missing, builds the default image if there is none (with
# progress), then runs the host agent in the foreground. WARREN_PROFILE picks the image
# profile (default standard); WARREN_DATA_DIR the state directory (default /var/lib/warren).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
image=$(node_modules/.bin/warren image build --profile "${WARREN_PROFILE:-standard}" | tail -n 1)
echo "warren: image $image" >&2
echo "warren: host agent API on ${WARREN_HOST_AGENT_SOCKET:-${WARREN_DATA_DIR:-/var/lib/warren}/host-agent.sock}" >&2
echo "warren: try  npx warren vm run --image ${image:7:12} -- uname -a" >&2
# tini reaps QEMUs that outlive an agent restart and get re-parented here.
exec tini -s -- node_modules/.bin/warren host-agent
