#!/usr/bin/env bash
# Creates .venv (if missing) and installs gradserve into it, editable, with the extras named in
# $GRADSERVE_EXTRAS (e.g. "dev"). Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
extras=${GRADSERVE_EXTRAS:-}
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
# torch==2.13.0 is pinned in pyproject.toml: on these machines pip takes the local CPU wheel.
# Elsewhere, install torch first from https://download.pytorch.org/whl/cpu (see README).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
