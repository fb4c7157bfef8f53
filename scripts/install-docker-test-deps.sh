#!/usr/bin/env bash
# Installs what tests/docker needs (Debian bookworm, as root): a Docker engine and Debian's
# docker-compose v1, debootstrap for the stand-in base image, Prometheus and promtool, and
# python3-yaml (the tests read YAML through Debian's python3 when PyYAML is not in the venv).
# Idempotent: does nothing when everything is there. Starts no service.
set -euo pipefail

packages=(docker.io docker-compose debootstrap prometheus python3-yaml tar)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "docker test dependencies: already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "docker test dependencies: need root to install ${missing[*]}" >&2
    exit 1
fi
echo "docker test dependencies: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: no daemon is started by the packages' scripts (the tests start their own).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && rm -f "$policy"' EXIT
for attempt in 1 2 3; do
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        exit 0
    fi
    echo "apt-get failed (attempt $attempt); dpkg lock held by another install?" >&2
    sleep 10
done
exit 1
