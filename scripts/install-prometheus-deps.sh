#!/usr/bin/env bash
# Installs Debian's Prometheus and Pushgateway binaries for tests/test_prometheus.py.
# Idempotent: does nothing when both binaries are present. Services are not started (policy-rc.d
# blocks systemd starts); the tests start the binaries themselves on loopback ports.
set -euo pipefail

packages=(prometheus prometheus-pushgateway)
if command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null; then
  echo "prometheus and prometheus-pushgateway already installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

# Keep package post-install scripts from starting the daemons (no systemd here, and tests own them).
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
command -v prometheus
command -v prometheus-pushgateway
