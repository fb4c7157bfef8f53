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

# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_install_without_starting "${packages[@]}"
/usr/sbin/nginx -v
