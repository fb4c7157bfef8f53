#!/usr/bin/env bash
# Installs Debian's nginx for tests/test_nginx_placement.py (a gRPC proxy that places runs on
# replicas by the `gradserve-run` header; docs/scaling.md). Idempotent: does nothing when
# /usr/sbin/nginx is present. The service is not started (policy-rc.d blocks starts); the test
# runs nginx itself, on loopback, with its own config, pid and logs in a temporary folder.
set -euo pipefail

packages=(nginx)
if [ -x /usr/sbin/nginx ]; then
  echo "nginx already installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

# Keep the package's post-install script from starting nginx on port 80 (tests own nginx).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  created_policy=1
fi
cleanup() {
  if [ "$created_policy" -eq 1 ]; then
    $sudo rm -f "$policy"
  fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt cannot find a candidate (fresh image, stale lists).
if ! apt-cache policy "${packages[@]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  $sudo apt-get update
fi
if ! $sudo apt-get install -y --no-install-recommends "${packages[@]}"; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${packages[@]}"
fi
/usr/sbin/nginx -v
