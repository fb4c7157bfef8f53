#!/usr/bin/env bash
# Regenerates the committed Python code for proto/ (messages, .pyi stubs, gRPC stubs).
# Compiled with -I proto so the modules import as gradserve.v1.* (src/gradserve/v1); CI runs
# scripts/check.sh, which fails when they differ from what this makes.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
out=src/gradserve/v1
rm -f "$out"/*_pb2.py "$out"/*_pb2.pyi "$out"/*_pb2_grpc.py
"$python" -m grpc_tools.protoc -I proto \
  --python_out=src --pyi_out=src --grpc_python_out=src \
  proto/gradserve/v1/*.proto
