#!/usr/bin/env bash
# Memory of a lock key against a plain string lock key (`SET key token PX
# ttl`), by both measures, in one run:
# - MEMORY USAGE of one key (what the server reports per key);
# - used_memory per key: the server's used_memory after N keys minus before,
#   divided by N (the truth, index and allocator rounding included).
# Each kind of key runs on a fresh server, fresh and after EXTENSIONS
# extensions of every key (LOCK.EXTEND for a lock, PEXPIRE for a string key).
#
#   scripts/mem.sh                       # 100k keys, a 40-byte token, 10 extensions
#   N=200000 EXTENSIONS=3 scripts/mem.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MODULE=${MODULE:-$PWD/target/release/libredis_lock.so}
N=${N:-100000}
EXTENSIONS=${EXTENSIONS:-10}
TOKEN=${TOKEN:-0123456789abcdef0123456789abcdef01234567}   # 40 bytes
TTL=240000
[ -f "$MODULE" ] || { echo "build the module first: cargo build --release" >&2; exit 1; }

PORT=$(free_port)
DIR=$(mktemp -d)
trap 'stop_node "$DIR"; rm -rf "$DIR"' EXIT
cli() { redis-cli -p "$PORT" "$@"; }
used() { cli INFO memory | awk -F: '/^used_memory:/{print $2+0}'; }

# cmds KIND STEP: the RESP commands for every key (STEP 0: create it, else extend it).
cmds() {
  awk -v n="$N" -v kind="$1" -v step="$2" -v tok="$TOKEN" -v ttl="$TTL" 'BEGIN{
    for (i = 0; i < n; i++) {
      key = sprintf("lock:%07d", i)
      if (kind == "lock" && step == 0)
        printf "*4\r\n$12\r\nLOCK.ACQUIRE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(key), key, length(tok), tok, length(ttl), ttl
      else if (kind == "lock")
        printf "*4\r\n$11\r\nLOCK.EXTEND\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(key), key, length(tok), tok, length(ttl), ttl
      else if (step == 0)
        printf "*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nPX\r\n$%d\r\n%s\r\n", length(key), key, length(tok), tok, length(ttl), ttl
      else
        printf "*3\r\n$7\r\nPEXPIRE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(key), key, length(ttl), ttl
    }
  }'
}

measure() {
  local kind=$1
  start_node "$PORT" "$DIR" "$MODULE"
  local before; before=$(used)
  cmds "$kind" 0 | cli --pipe >/dev/null
  local fresh_used; fresh_used=$(used)
  local fresh_mu; fresh_mu=$(cli MEMORY USAGE lock:0000042)
  for step in $(seq 1 "$EXTENSIONS"); do cmds "$kind" "$step" | cli --pipe >/dev/null; done
  local ext_used; ext_used=$(used)
  local ext_mu; ext_mu=$(cli MEMORY USAGE lock:0000042)
  local keys; keys=$(cli DBSIZE)
  stop_node "$DIR"
  [ "$keys" = "$N" ] || { echo "$kind: $keys keys, expected $N" >&2; exit 1; }
  M[$kind,fresh_mu]=$fresh_mu
  M[$kind,fresh_used]=$(( (fresh_used - before) / N ))
  M[$kind,ext_mu]=$ext_mu
  M[$kind,ext_used]=$(( (ext_used - before) / N ))
}


declare -A M
measure string
measure lock
echo "memory per key: $N keys, ${#TOKEN}-byte token, $(redis-server --version | cut -d' ' -f3)"
printf '%-34s %8s %8s %6s\n' "" lock string ratio
for when in fresh ext; do
  label=fresh; [ "$when" = ext ] && label="after $EXTENSIONS extensions each"
  for m in mu used; do
    name="MEMORY USAGE"; [ "$m" = used ] && name="used_memory / key"
    printf '%-34s %8s %8s %6s\n' "$name ($label)" "${M[lock,${when}_$m]}" "${M[string,${when}_$m]}" \
      "$(ratio "${M[lock,${when}_$m]}" "${M[string,${when}_$m]}")"
  done
done
