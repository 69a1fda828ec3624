#!/usr/bin/env bash
# Make sure the Debian/Ubuntu packages sparse3d needs are present.
# usage: tools/ensure_system_packages.sh PKG...
# As root with apt-get: installs the missing ones (one `apt-get update` first).
# Otherwise: prints the exact command to run and fails, so nothing half-works later.
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "sparse3d needs these system libraries: ${missing[*]} (open3d: libGL, libgomp, libusb; browser tests: chromium)." >&2
  echo "This is not a Debian/Ubuntu machine: install their equivalents with your package manager, then run make again." >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "sparse3d needs these Debian packages, which are missing: ${missing[*]}" >&2
  echo "Run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  echo "then run make again." >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
