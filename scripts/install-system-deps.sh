#!/usr/bin/env bash
# Installs the system tools the full test suite uses (Debian packages, npm packages), by running
# every scripts/install-*-deps.sh. Needs root (CI runs as root). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: needs root for apt-get; tests needing these tools will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
for installer in scripts/install-*-deps.sh; do
  [ "$installer" = "scripts/install-system-deps.sh" ] && continue  # this script itself
  echo "== $installer"
  "$installer"
done
