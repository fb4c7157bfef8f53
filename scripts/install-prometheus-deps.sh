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

# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install_without_starting "${packages[@]}"
command -v prometheus
command -v prometheus-pushgateway
