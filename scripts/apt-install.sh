# Sourced by the install-*-deps.sh scripts: apt_install_without_starting PACKAGE...
# Installs Debian packages without letting their post-install scripts start services (the
# tests start the daemons themselves, on loopback, with their own configs), and refreshes the
# package lists only when apt has no candidate or the install fails (fresh image, stale lists).
apt_install_without_starting() {
  local sudo="" policy=/usr/sbin/policy-rc.d created_policy=0 status=0
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache policy "$@" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $sudo apt-get update
  fi
  if ! $sudo apt-get install -y --no-install-recommends "$@"; then
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "$@" || status=$?
  fi
  if [ "$created_policy" -eq 1 ]; then
    $sudo rm -f "$policy"
  fi
  return "$status"
}
