#!/usr/bin/env bash
# Static checks: generated code is fresh, ruff lint + format, mypy strict.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}

# Regenerate into a scratch folder and compare with what is committed.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$py" -m grpc_tools.protoc -I proto --python_out="$scratch" --pyi_out="$scratch" \
  --grpc_python_out="$scratch" proto/gradserve/v1/*.proto
for generated in "$scratch"/gradserve/v1/*; do
  if ! cmp -s "$generated" "gradserve/v1/$(basename "$generated")"; then
    echo "stale generated code: gradserve/v1/$(basename "$generated"); run scripts/gen_proto.sh" >&2
    exit 1
  fi
done
"$py" -m ruff check .
"$py" -m ruff format --check .
"$py" -m mypy
echo "checks passed"
