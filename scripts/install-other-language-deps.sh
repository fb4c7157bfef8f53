#!/usr/bin/env bash
# Installs what tests/test_other_languages.py and tests/test_contract_compat.py need beyond the
# Python venv: Debian's gRPC C++ toolchain (examples/cpp), Debian's Go toolchain, code generators
# and Go libraries (examples/go, built offline against /usr/share/gocode), Node.js packages
# (examples/node, from package-lock.json with npm ci) and the buf CLI (PyPI's buf-bin, into
# /usr/local/bin; the dev extra also puts it in .venv/bin).
# Idempotent: installs only what is missing. Needs root for apt-get (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

packages=(cmake g++ make pkg-config protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
          libgrpc++-dev
          # examples/go. golang-github-golang-protobuf-1-5-dev, not golang-goprotobuf-dev (1.3):
          # grpc-go's status details need the APIv2-backed ptypes; 1.3 panics at run time.
          golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
          golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
          golang-google-genproto-dev)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "Debian packages for examples/cpp and examples/go already installed"
fi

# Node packages exactly as locked; node_modules is git-ignored.
(cd examples/node && npm ci --no-audit --no-fund --loglevel=error)

# buf for `buf breaking`; the wheel carries the binary, so nothing is downloaded at run time.
if ! command -v buf >/dev/null; then
  $sudo "${PYTHON:-python3}" -m pip install --quiet --root-user-action=ignore --no-deps --prefix /usr/local "buf-bin==1.75.0"
fi
buf --version
