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
# The torch the project is tested with, installed first and explicitly: pyproject.toml asks only
# for a range, which pip would meet with the newest torch of its index (a multi-GB CUDA build on
# PyPI). On these machines pip takes the local CPU wheel; elsewhere set PIP_INDEX_URL to
# https://download.pytorch.org/whl/cpu for this step (see README). The Dockerfile's
# TORCH_VERSION says the same version (tests/test_packaging.py keeps them equal).
TORCH_VERSION=2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
