#!/usr/bin/env bash
# Hand-over latency (release -> next holder's grant) p50/p99 on 1 and 5 local
# nodes, waiting in the nodes' queues (LOCK.ACQUIRE ... WAIT) against polling
# (this client's polling mode and rslock 0.10), and the throughput of one
# lock passed among 16 contenders, all in one run.
#
#   scripts/bench-handover.sh [samples]      (default 200; polling cases use a quarter)
set -euo pipefail
cd "$(dirname "$0")/.."
samples="${1:-200}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p redis-lock
cargo build --release -p redis-lock-client --example handover
REDIS_LOCK_MODULE="$PWD/$target/release/libredis_lock.so" "$target/release/examples/handover" "$samples"
