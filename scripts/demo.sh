#!/usr/bin/env bash
# The demo: start a node with the module on a free port and walk through the
# lock commands with redis-cli. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MODULE=${MODULE:-$PWD/target/release/libredis_lock.so}
[ -f "$MODULE" ] || { echo "build the module first: make release" >&2; exit 1; }
PORT=$(free_port)
DIR=$(mktemp -d)
trap 'stop_node "$DIR"; rm -rf "$DIR"' EXIT
start_node "$PORT" "$DIR" "$MODULE" --enable-debug-command yes

step() { printf '\n\033[1m# %s\033[0m\n' "$1"; }
run() { printf '127.0.0.1:%s> %s\n' "$PORT" "$*"; redis-cli -p "$PORT" "$@"; }

echo "redis-server $(redis-server --version | cut -d' ' -f3 | cut -d= -f2) on port $PORT with $(basename "$MODULE")"
step "worker A takes the lock for 5 s: the reply is its fencing token"
run LOCK.ACQUIRE jobs:nightly worker-a-7f3c 5000
step "worker B is refused while A holds it (nil)"
run LOCK.ACQUIRE jobs:nightly worker-b-91d2 5000
step "what the lock looks like (the token is never shown, only a fingerprint)"
run LOCK.INFO jobs:nightly
step "B cannot extend or release A's lock"
run LOCK.EXTEND jobs:nightly worker-b-91d2 5000
run LOCK.RELEASE jobs:nightly worker-b-91d2
step "A extends its lease, then releases"
run LOCK.EXTEND jobs:nightly worker-a-7f3c 10000
run LOCK.RELEASE jobs:nightly worker-a-7f3c
step "B gets it now, with a larger fencing token"
run LOCK.ACQUIRE jobs:nightly worker-b-91d2 300
step "B's lease runs out after 300 ms; the key is removed"
sleep 0.5
run EXISTS jobs:nightly
step "locks survive DEBUG RELOAD (and AOF, restarts, replication)"
run LOCK.ACQUIRE jobs:report worker-c-55aa 60000
run DEBUG RELOAD || echo "(DEBUG is disabled on this build; skipped)"
run LOCK.ACQUIRE jobs:report worker-d-0b1e 60000
run TYPE jobs:report
echo
echo "demo done; node stopped."
