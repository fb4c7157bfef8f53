#!/usr/bin/env bash
# Records the released gradserve.v1 contract as a FileDescriptorSet: run at release time and
# commit proto/released/gradserve.v1.binpb. tests/test_contract_compat.py then fails when proto/
# breaks what this snapshot promised (removed or renumbered fields, changed types, removed RPCs).
#   scripts/snapshot_contract.sh          # from the working tree's proto/
#   scripts/snapshot_contract.sh v1.2.0   # from proto/ as committed at a git revision
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
out=proto/released/gradserve.v1.binpb
root=proto
if [[ $# -gt 0 ]]; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  git archive "$1" proto/gradserve | tar -x -C "$root"
  root="$root/proto"
fi
mkdir -p "$(dirname "$out")"
"$python" -m grpc_tools.protoc -I "$root" --include_imports --descriptor_set_out="$out" \
  "$root"/gradserve/v1/*.proto
echo "wrote $out from $root"
