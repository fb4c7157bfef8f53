#!/usr/bin/env bash
# The docs site (mkdocs.yml: docs/ and the API reference from docstrings), read from a copy of
# the package laid out as it installs (griffe cannot follow setuptools' package-dir mapping).
#   scripts/docs.sh build --strict --site-dir site    # what scripts/check.sh runs
#   scripts/docs.sh serve                             # read it at http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
cp -r src/gradserve "$tree/gradserve"
cp -r server "$tree/gradserve/server"
cp -r client "$tree/gradserve/client"
GRADSERVE_API_TREE="$tree" "$py" -m mkdocs "$@"
