#!/usr/bin/env bash
# Quickstart: install gradserve into .venv and run the trainer (embedded server unless --server).
# Arguments go to client/train.py, e.g. scripts/train.sh --epochs 300 --lr 0.1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
exec .venv/bin/python client/train.py "$@"
