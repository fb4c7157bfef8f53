#!/usr/bin/env bash
# Installs Debian's Graphviz (`dot`) for tests/test_graph.py's DOT -> PNG check and for
# rendering docs/graph-linear.png. Idempotent: does nothing when `dot` is already on PATH.
set -euo pipefail

if command -v dot >/dev/null; then
  echo "graphviz already installed: $(dot -V 2>&1)"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt cannot find a candidate (fresh image, stale lists).
if ! apt-cache policy graphviz 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  $sudo apt-get update
fi
if ! $sudo apt-get install -y --no-install-recommends graphviz; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends graphviz
fi
dot -V
