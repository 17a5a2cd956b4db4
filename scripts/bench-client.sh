#!/usr/bin/env bash
# Acquire+release latency of the quorum client on 1 and 5 local nodes, and of
# rslock 0.10 on the same 5 nodes, in one run; and fenced acquisition (the
# default) against unfenced on the same 5 nodes. Prints tables with ratios.
#
#   scripts/bench-client.sh [iterations]     (default 4000 per configuration)
#   BENCH_SPIN=1 scripts/bench-client.sh     (keep every CPU busy, see below)
#
# Builds the module and the benchmark in release mode; the benchmark starts
# its own redis-server processes (free ports, module loaded) through testkit
# and stops them at the end. Absolute numbers drift between runs and
# machines: compare the ratios, which come from one run.
#
# On a VM whose CPUs sleep when idle, each wake-up adds tens of microseconds
# to a loopback round trip, which swamps the 1-node numbers. BENCH_SPIN=1
# runs one lowest-priority busy loop per CPU during the benchmark so the CPUs
# never idle (the servers and the client still get the CPU first).
set -euo pipefail

cd "$(dirname "$0")/.."
iterations="${1:-4000}"
target="${CARGO_TARGET_DIR:-target}"

cargo build --release -p redis-lock
cargo build --release -p redis-lock-client --example bench

# A private copy: another build replacing the .so mid-run cannot disturb it.
tmp="$(mktemp -d)"
spinners=()
cleanup() {
  for pid in "${spinners[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
cp "$target/release/libredis_lock.so" "$tmp/libredis_lock.so"

if [ "${BENCH_SPIN:-0}" = 1 ]; then
  for _ in $(seq "$(nproc)"); do
    nice -n 19 bash -c 'while :; do :; done' &
    spinners+=("$!")
  done
  echo "bench-client: ${#spinners[@]} idle spinners at nice 19"
fi

REDIS_LOCK_MODULE="$tmp/libredis_lock.so" "$target/release/examples/bench" "$iterations"
