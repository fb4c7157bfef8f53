#!/usr/bin/env bash
# The test command: install gradserve with its dev extras into .venv, run the static checks,
# then the whole test suite. Arguments go to pytest (e.g. scripts/test.sh -m "not docker").
# Tests that need system tools (prometheus, docker, node, a C++ toolchain, graphviz) skip with a
# reason when those are missing; scripts/install-system-deps.sh installs them (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
GRADSERVE_EXTRAS=dev scripts/setup-venv.sh
scripts/check.sh
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
