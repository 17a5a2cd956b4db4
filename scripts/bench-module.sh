#!/usr/bin/env bash
# Benchmarks LOCK.ACQUIRE / LOCK.RELEASE against the plain-Redis patterns on
# one node with redis-benchmark, and reports ratios measured in the same run
# (rounds interleaved, median of the rounds: the machine is shared and noisy).
#
#   scripts/bench-module.sh            # 3 rounds
#   ROUNDS=5 CLIENTS=50 scripts/bench-module.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MODULE=${MODULE:-$PWD/target/release/libredis_lock.so}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-50}
N_PLAIN=${N_PLAIN:-200000}     # requests per run without pipelining
N_PIPE=${N_PIPE:-1000000}      # requests per run with -P 16
KEYSPACE=100000
FRESH_KEYSPACE=1000000000
HELD=1000000                   # locks preloaded for the release benchmark
[ -f "$MODULE" ] || { echo "build the module first: cargo build --release" >&2; exit 1; }

PORT=$(free_port)
DIR=$(mktemp -d)
trap 'stop_node "$DIR"; rm -rf "$DIR"' EXIT
start_node "$PORT" "$DIR" "$MODULE"
cli() { redis-cli -p "$PORT" "$@"; }

ACQ_LUA='if redis.call("exists", KEYS[1]) == 1 then return 0 end
redis.call("set", KEYS[1], ARGV[1], "PX", ARGV[2])
return 1'
DEL_LUA='if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0'
ACQ_SHA=$(cli SCRIPT LOAD "$ACQ_LUA")
DEL_SHA=$(cli SCRIPT LOAD "$DEL_LUA")

# rps N PIPELINE KEYSPACE command...: requests per second of one run.
rps() {
  local n=$1 pipe=$2 space=$3; shift 3
  redis-benchmark -p "$PORT" -c "$CLIENTS" -n "$n" -r "$space" -P "$pipe" --csv "$@" 2>/dev/null \
    | tail -n 1 | awk -F'","' '{gsub(/"/, "", $2); print $2}'
}

# preload KIND: HELD keys rel:000000000000.. held by token "tok".
preload() {
  cli FLUSHALL >/dev/null
  if [ "$1" = lock ]; then
    awk -v n=$HELD 'BEGIN{for(i=0;i<n;i++) printf "*4\r\n$12\r\nLOCK.ACQUIRE\r\n$16\r\nrel:%012d\r\n$3\r\ntok\r\n$6\r\n240000\r\n", i}'
  else
    awk -v n=$HELD 'BEGIN{for(i=0;i<n;i++) printf "*5\r\n$3\r\nSET\r\n$16\r\nrel:%012d\r\n$3\r\ntok\r\n$2\r\nPX\r\n$6\r\n240000\r\n", i}'
  fi | cli --pipe >/dev/null
}

# Two acquire workloads, each against SET NX PX and the Lua script:
# - fresh: random keys from a huge keyspace, so nearly every attempt is a
#   grant (the write path);
# - contended: 1M attempts on 100k keys with a 10 s TTL, so about 90% find
#   the key held and are refused (the read path). Every attempt carries its
#   own random token, as attempts by different clients would: SET NX and the
#   script refuse a held key whatever the value, while LOCK.ACQUIRE with the
#   holder's own token is a re-acquire that refreshes the lease (a write).
declare -A R
run_round() {
  for pipe in 1 16; do
    local n=$N_PLAIN; [ "$pipe" = 16 ] && n=$N_PIPE
    for w in fresh contended; do
      local space=$KEYSPACE; [ "$w" = fresh ] && space=$FRESH_KEYSPACE
      cli FLUSHALL >/dev/null; R[set_$w,$pipe]+=" $(rps "$n" "$pipe" "$space" SET key:__rand_int__ tok NX PX 10000)"
      cli FLUSHALL >/dev/null; R[lock_$w,$pipe]+=" $(rps "$n" "$pipe" "$space" LOCK.ACQUIRE key:__rand_int__ tok:__rand_int__ 10000)"
      cli FLUSHALL >/dev/null; R[lua_$w,$pipe]+=" $(rps "$n" "$pipe" "$space" EVALSHA "$ACQ_SHA" 1 key:__rand_int__ tok 10000)"
    done
    # Releases on held keys: 1M held, 200k random picks, so about 90% hit a held lock.
    preload lock; R[rel,$pipe]+=" $(rps "$N_PLAIN" "$pipe" $HELD LOCK.RELEASE rel:__rand_int__ tok)"
    preload string; R[del,$pipe]+=" $(rps "$N_PLAIN" "$pipe" $HELD EVALSHA "$DEL_SHA" 1 rel:__rand_int__ tok)"
  done
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

echo "redis-lock module benchmark: $(redis-server --version | cut -d' ' -f3), $CLIENTS clients, $ROUNDS rounds (median)"
for r in $(seq 1 "$ROUNDS"); do echo "  round $r/$ROUNDS..."; run_round; done

KINDS="set_fresh lock_fresh lua_fresh set_contended lock_contended lua_contended rel del"
declare -A M
for k in $KINDS; do
  M[$k,1]=$(echo "${R[$k,1]}" | median)
  M[$k,16]=$(echo "${R[$k,16]}" | median)
done
printf '\n%-52s %12s %12s\n' "command (median ops/s)" "P=1" "P=16"
for k in $KINDS; do
  case $k in
    set_*) name="SET key tok NX PX 10000";;
    lock_*) name="LOCK.ACQUIRE key tok 10000";;
    lua_*) name="EVALSHA acquire script (exists + set px)";;
    rel) name="LOCK.RELEASE on held keys";;
    del) name="EVALSHA compare-and-delete on held keys";;
  esac
  case $k in
    *_fresh) name="$name, fresh keys";;
    *_contended) name="$name, contended";;
  esac
  printf '%-52s %12.0f %12.0f\n' "$name" "${M[$k,1]}" "${M[$k,16]}"
done

row() { printf '%-52s %10s %10s\n' "$1" "$(ratio "${M[$2,1]}" "${M[$3,1]}")" "$(ratio "${M[$2,16]}" "${M[$3,16]}")"; }
printf '\n%-52s %10s %10s\n' "ratio" "P=1" "P=16"
row "ACQUIRE / SET NX PX, fresh keys (target >= 0.95)" lock_fresh set_fresh
row "ACQUIRE / SET NX PX, contended (target >= 0.95)" lock_contended set_contended
row "ACQUIRE / Lua acquire, fresh keys (target >= 1.8)" lock_fresh lua_fresh
row "ACQUIRE / Lua acquire, contended (target >= 1.8)" lock_contended lua_contended
row "RELEASE / Lua delete (target >= 1.8)" rel del

# Memory: one key each, then 100k of each kind (includes the expire dict for
# SET PX and the module's expiry index for locks).
cli FLUSHALL >/dev/null
cli LOCK.ACQUIRE mem:000000000001 0123456789abcdef0123456789abcdef0123456789 60000 >/dev/null
cli SET str:000000000001 0123456789abcdef0123456789abcdef0123456789 PX 60000 >/dev/null
lock_one=$(cli MEMORY USAGE mem:000000000001)
str_one=$(cli MEMORY USAGE str:000000000001)
used() { cli INFO memory | awk -F: '/^used_memory:/{print $2+0}'; }
cli FLUSHALL >/dev/null; base=$(used)
awk 'BEGIN{for(i=0;i<100000;i++) printf "*4\r\n$12\r\nLOCK.ACQUIRE\r\n$16\r\nmem:%012d\r\n$42\r\n0123456789abcdef0123456789abcdef0123456789\r\n$6\r\n240000\r\n", i}' | cli --pipe >/dev/null
locks=$(( $(used) - base ))
cli FLUSHALL >/dev/null; base=$(used)
awk 'BEGIN{for(i=0;i<100000;i++) printf "*5\r\n$3\r\nSET\r\n$16\r\nstr:%012d\r\n$42\r\n0123456789abcdef0123456789abcdef0123456789\r\n$2\r\nPX\r\n$6\r\n240000\r\n", i}' | cli --pipe >/dev/null
strs=$(( $(used) - base ))
printf '\n%-44s %10s %10s %8s\n' "memory (42-byte token, 16-byte key)" "lock" "SET PX" "ratio"
printf '%-44s %10s %10s %8s\n' "MEMORY USAGE of one key (bytes)" "$lock_one" "$str_one" "$(ratio "$lock_one" "$str_one")"
printf '%-44s %10s %10s %8s\n' "used_memory per key, 100k keys (bytes)" "$((locks / 100000))" "$((strs / 100000))" "$(ratio "$locks" "$strs")"
