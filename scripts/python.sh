#!/usr/bin/env bash
# The Python package (python/, import name redislock_quorum): a project-local
# virtual environment, the wheel, its tests and its benchmark.
#
#   scripts/python.sh wheel              the abi3 wheel (CPython >= 3.9) into target/wheels/
#   scripts/python.sh test [pytest args] build into the venv and run the tests against real nodes
#   scripts/python.sh bench [iterations] acquire+release p50/p99 on 5 local nodes: this package,
#                                        the Rust client, pottery and python-redis-lock
#
# The venv is $REDISLOCK_VENV (default .venv in the repository, gitignored);
# what it lacks is installed from PyPI with pip. The system Python is never
# touched. The tests start their own redis-server processes with the module
# ($REDIS_LOCK_MODULE, default target/debug/libredis_lock.so).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${REDISLOCK_VENV:-$ROOT/.venv}
PY=$VENV/bin/python

# ensure_venv MODULE=PACKAGE...: the venv, with each import name present.
ensure_venv() {
  if [ ! -x "$PY" ]; then
    echo "python.sh: creating $VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      # Debian's Python keeps venv (ensurepip) in a package of its own.
      rm -rf "$VENV"
      SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    fi
  fi
  local missing=() spec
  for spec in "$@"; do
    "$PY" -c "import ${spec%%=*}" >/dev/null 2>&1 || missing+=("${spec#*=}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "python.sh: pip install ${missing[*]} (into $VENV)"
    "$PY" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  fi
}

# develop [--release]: build the extension and install the package into the venv.
develop() {
  ensure_venv maturin=maturin
  local log; log=$(mktemp)
  if ! VIRTUAL_ENV=$VENV "$VENV/bin/maturin" develop --quiet -m python/Cargo.toml "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "python.sh: the package did not build" >&2
    exit 1
  fi
  rm -f "$log"
  "$PY" -c 'import redislock_quorum' 
}

case "${1:-}" in
  wheel)
    ensure_venv maturin=maturin
    "$VENV/bin/maturin" build --release -m python/Cargo.toml --out "${CARGO_TARGET_DIR:-target}/wheels"
    ;;
  test)
    shift
    ensure_venv maturin=maturin pytest=pytest redis=redis
    develop
    export REDIS_LOCK_MODULE=${REDIS_LOCK_MODULE:-$ROOT/${CARGO_TARGET_DIR:-target}/debug/libredis_lock.so}
    [ -f "$REDIS_LOCK_MODULE" ] || cargo build -p redis-lock
    # The whole suite unless a test path is given.
    paths=(python/tests)
    for arg in "$@"; do case $arg in -*) ;; *) paths=() ;; esac; done
    "$PY" -m pytest -q -p no:cacheprovider "${paths[@]}" "$@"
    ;;
  bench)
    shift
    ensure_venv maturin=maturin redis=redis pottery=pottery redis_lock=python-redis-lock
    cargo build --release -p redis-lock
    cargo build --release -p redis-lock-client --example bench_nodes
    develop --release
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    # A private copy: another build replacing the .so mid-run cannot disturb it.
    cp "${CARGO_TARGET_DIR:-target}/release/libredis_lock.so" "$tmp/"
    REDIS_LOCK_MODULE=$tmp/libredis_lock.so RUST_BENCH=${CARGO_TARGET_DIR:-target}/release/examples/bench_nodes \
      "$PY" python/bench.py "$@"
    ;;
  *)
    echo "usage: $0 wheel | test [pytest args] | bench [iterations]" >&2
    exit 64
    ;;
esac
