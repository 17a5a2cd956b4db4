#!/usr/bin/env bash
# The demo: five local nodes with the module, and `redis-lock run` doing what
# it is for: the same job started on several machines, one at a time.
#   1. the module's commands on one node, with redis-cli;
#   2. three workers contend for one key with `redis-lock run`;
#   3. the holder's redis-lock is killed -9 mid-work: its job dies with it,
#      nobody releases the lock, and the next worker takes over after the TTL;
#   4. a node is stopped while the lock is held: the lock lives on;
#   5. who held the lock when, with fencing tokens, checked for overlap.
# Free ports, every wait bounded, everything removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

BIN=$PWD/target/release/redis-lock
MODULE=${MODULE:-$PWD/target/release/libredis_lock.so}
for f in "$BIN" "$MODULE"; do
  [ -e "$f" ] || { echo "missing $f: make release" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/redis-lock-demo.XXXXXX")
export NODES_STATE=$WORK/nodes MODULE
WORKERS=()
cleanup() {
  local p
  for p in "${WORKERS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  bash scripts/nodes.sh stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
redis-lock() { "$BIN" "$@"; }
show() { printf '$ %s\n' "$*"; "$@" || printf '(exit status %s)\n' "$?"; }

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every 50 ms, at most SECONDS.
wait_until() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out after ${limit}s waiting for $what" >&2
      exit 1
    fi
    sleep 0.05
  done
}

step "five nodes with the module, on free ports (scripts/nodes.sh start)"
eval "$(bash scripts/nodes.sh start 5)"
echo "REDIS_LOCK_NODES=$REDIS_LOCK_NODES"
show redis-lock status

PORT1=$(echo "$REDIS_LOCK_NODES" | cut -d, -f1 | sed 's/.*://')
cli() { printf '127.0.0.1:%s> %s\n' "$PORT1" "$*"; redis-cli --no-raw -p "$PORT1" "$@"; }
step "one node by hand: a grant replies its fencing token, a second holder gets nil"
cli LOCK.ACQUIRE demo:raw worker-a-7f3c 5000
cli LOCK.ACQUIRE demo:raw worker-b-91d2 5000
cli LOCK.RELEASE demo:raw worker-a-7f3c

KEY=demo:nightly
LOG=$WORK/log
: > "$LOG"
# The job each worker runs under the lock: log start and end with its fence.
JOB='trap '\''echo "worker $W fence $REDIS_LOCK_FENCE stopped $(date +%s.%N)" >> "$LOG"; exit 143'\'' TERM
echo "worker $W fence $REDIS_LOCK_FENCE start $(date +%s.%N)" >> "$LOG"
echo "  worker $W: has the lock, fence $REDIS_LOCK_FENCE; working for ${SECS}s"
sleep "$SECS"
echo "worker $W fence $REDIS_LOCK_FENCE end $(date +%s.%N)" >> "$LOG"
echo "  worker $W: done, releasing"'

step "three workers start the same job; one lock, TTL 2s, each waits up to 30s"
echo "\$ W=<1,2,3> redis-lock run --key $KEY --ttl 2s --wait 30s -- sh -c '<log start; sleep 3; log end>' &"
for w in 1 2 3; do
  W=$w SECS=3 LOG=$LOG "$BIN" run --key "$KEY" --ttl 2s --wait 30s -- sh -c "$JOB" &
  WORKERS[w]=$!
done

started() { [ "$(grep -c ' start ' "$LOG")" -ge "$1" ]; }
nth_start() { awk -v n="$1" '/ start /{ if (++i == n) { print $2, $4; exit } }' "$LOG"; }

wait_until 15 "a worker to take the lock" started 1
read -r FIRST FIRST_FENCE < <(nth_start 1)
sleep 1

step "kill -9 worker $FIRST's redis-lock mid-work: its job dies with it, nobody releases"
STATUS=()
{
  show kill -9 "${WORKERS[FIRST]}"
  echo "worker $FIRST fence $FIRST_FENCE killed $(date +%s.%N)" >> "$LOG"
  # Reaped here, quietly (bash would report the kill on stderr).
  set +e; wait "${WORKERS[FIRST]}"; STATUS[FIRST]=$?; set -e
} 2>/dev/null
show redis-lock info --key "$KEY"

step "the next worker takes over once the TTL has run out"
wait_until 10 "another worker to take over" started 2

step "it finishes and releases: the last worker gets the lock at once"
wait_until 10 "the last worker to take over" started 3
read -r THIRD _ < <(nth_start 3)
sleep 0.5

step "stop node 1 while worker $THIRD holds the lock: renewals go on with 4 of 5 nodes"
show bash scripts/nodes.sh stop-node 1
sleep 1.5 # two renewals at TTL/3
show redis-lock status --key "$KEY"

finished() { ! kill -0 "$1" 2>/dev/null; }
for w in 1 2 3; do
  [ "$w" = "$FIRST" ] && continue
  wait_until 30 "worker $w to finish" finished "${WORKERS[w]}"
  set +e
  wait "${WORKERS[w]}"
  STATUS[w]=$?
  set -e
done

step "who held the lock when (seconds from the first start; fences as the jobs saw them)"
for w in 1 2 3; do echo "worker $w: redis-lock exit status ${STATUS[w]}"; done
echo
python3 - "$LOG" <<'EOF'
import sys

jobs = {}
for line in open(sys.argv[1]):
    _, worker, _, fence, what, at = line.split()
    job = jobs.setdefault(fence, {"worker": worker, "fence": int(fence)})
    job[what] = float(at)
jobs = sorted(jobs.values(), key=lambda j: j["start"])
t0 = jobs[0]["start"]
print(f"{'worker':<8}{'fence':<20}{'from':>7}{'to':>7}  how it ended")
ok, prev = True, None
for j in jobs:
    ends = {
        "end": "done, released",
        "killed": "killed -9 (lock left to run out)",
        "stopped": "stopped by redis-lock: the lock was lost",
    }
    what = next((w for w in ends if w in j), None)
    if what is None:
        print(f"worker {j['worker']} (fence {j['fence']}): no end recorded")
        ok = False
        continue
    end, how = j[what], ends[what]
    if prev is not None:
        gap = j["start"] - prev["until"]
        how += f"; took over {gap:.2f}s after the previous holder"
        if gap < 0:
            ok = False
            how += "  <-- OVERLAP"
        if j["fence"] <= prev["fence"]:
            ok = False
            how += "  <-- FENCE DID NOT INCREASE"
    print(f"{j['worker']:<8}{j['fence']:<20}{j['start'] - t0:>7.2f}{end - t0:>7.2f}  {how}")
    prev = {"until": end, "fence": j["fence"]}
print()
if ok:
    print(f"OK: {len(jobs)} holders, one at a time, fencing tokens increasing.")
else:
    print("FAILED: holders overlapped or fences did not increase.")
sys.exit(0 if ok else 1)
EOF
echo
echo "demo done; nodes stopped and removed."
