#!/usr/bin/env bash
# One lock passed among 4 contender processes (1 ms hold) on 1 and 5 local
# nodes: this client waiting in the nodes' queues (LOCK.ACQUIRE ... WAIT)
# and polling, and rslock 0.10 (a polling peer), then this client queued
# with one contender's wall clock a day ahead / behind (libfaketime), all in
# one run: locks/s, hand-over p50/p99, max wait, grants per contender,
# server commands and connections opened per grant, and the mutual
# exclusion and fence order checks.
#
#   scripts/bench-handover.sh [seconds per case]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p redis-lock
cargo build --release -p redis-lock-client --example handover
REDIS_LOCK_MODULE="$PWD/$target/release/libredis_lock.so" "$target/release/examples/handover" "$secs"
