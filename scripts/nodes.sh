#!/usr/bin/env bash
# Local nodes with the module, for trying the redis-lock tool and for the demo.
#
#   scripts/nodes.sh start [N]     start N nodes (default 5) on free ports, data in a temp dir;
#                                  prints `export REDIS_LOCK_NODES=...` on stdout, so
#                                  `eval "$(scripts/nodes.sh start)"` sets it
#   scripts/nodes.sh stop          stop them and remove their data
#   scripts/nodes.sh status        which are running
#   scripts/nodes.sh stop-node I   stop node I (1-based), keeping its port and data dir
#   scripts/nodes.sh start-node I  start node I again on its port
#
# The state (where the data is, the REDIS_LOCK_NODES line) lives in $NODES_STATE,
# by default .nodes/ in the repository (gitignored). MODULE overrides the module
# (default target/release/libredis_lock.so).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/lib.sh"
STATE=${NODES_STATE:-$ROOT/.nodes}
MODULE=${MODULE:-$ROOT/target/release/libredis_lock.so}

say() { echo "$@" >&2; }
data_dir() { cat "$STATE/data" 2>/dev/null || true; }
node_dirs() { local d; d=$(data_dir); [ -n "$d" ] && ls -d "$d"/node* 2>/dev/null | sort -V || true; }
alive() { [ -f "$1/pid" ] && running "$(cat "$1/pid")"; }

# start_one DIR [PORT]: start a node in DIR on PORT (or a free port, retried if
# another process takes it first) and check that it is ours, with the module.
start_one() {
  local dir=$1 port=${2:-} tries
  for tries in 1 2 3; do
    local p=${port:-$(free_port)}
    if start_node "$p" "$dir" "$MODULE" 2>"$dir.err" && alive "$dir" \
        && redis-cli -p "$p" MODULE LIST 2>/dev/null | grep -qx lock; then
      echo "$p" > "$dir/port"
      rm -f "$dir.err"
      return 0
    fi
    stop_node "$dir"
    [ -z "$port" ] || break
  done
  say "could not start a node in $dir:"; cat "$dir.err" >&2 2>/dev/null || true
  return 1
}

cmd_start() {
  local n=${1:-5}
  if [ -f "$STATE/env" ]; then
    local running=0 total=0 d
    for d in $(node_dirs); do total=$((total + 1)); alive "$d" && running=$((running + 1)); done
    if [ "$running" -gt 0 ]; then
      say "already running ($running of $total nodes; scripts/nodes.sh stop first for a fresh set)"
      echo "export $(cat "$STATE/env")"
      return 0
    fi
    cmd_stop >/dev/null 2>&1
  fi
  command -v redis-server >/dev/null || { say "redis-server not found: make deps"; return 1; }
  [ -f "$MODULE" ] || { say "module not found at $MODULE: make release"; return 1; }
  mkdir -p "$STATE"
  local data i urls=""
  data=$(mktemp -d "${TMPDIR:-/tmp}/redis-lock-nodes.XXXXXX")
  echo "$data" > "$STATE/data"
  for i in $(seq 1 "$n"); do
    start_one "$data/node$i" || { cmd_stop >/dev/null 2>&1; return 1; }
    urls="$urls,redis://127.0.0.1:$(cat "$data/node$i/port")"
  done
  echo "REDIS_LOCK_NODES=${urls#,}" > "$STATE/env"
  say "started $n nodes ($(redis-server --version | cut -d' ' -f1-3) with $(basename "$MODULE")), data in $data"
  echo "export $(cat "$STATE/env")"
}

cmd_stop() {
  local d data
  data=$(data_dir)
  for d in $(node_dirs); do stop_node "$d"; done
  if [ -n "$data" ]; then
    case "$data" in */redis-lock-nodes.*) rm -rf "$data" ;; esac
  fi
  rm -f "$STATE/env" "$STATE/data"
  rmdir "$STATE" 2>/dev/null || true
  say "nodes stopped"
}

cmd_status() {
  [ -f "$STATE/env" ] || { say "no nodes (scripts/nodes.sh start)"; return 1; }
  local d i=0
  for d in $(node_dirs); do
    i=$((i + 1))
    local port; port=$(cat "$d/port")
    if alive "$d" && redis-cli -p "$port" PING 2>/dev/null | grep -q PONG; then
      echo "node $i  127.0.0.1:$port  running (pid $(cat "$d/pid"))"
    else
      echo "node $i  127.0.0.1:$port  stopped"
    fi
  done
  cat "$STATE/env"
}

node_dir() {
  local d; d="$(data_dir)/node$1"
  [ -f "$d/port" ] || { say "no node $1"; return 1; }
  echo "$d"
}

case "${1:-}" in
  start) cmd_start "${2:-5}" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  stop-node) d=$(node_dir "${2:?node number}"); stop_node "$d"; say "node $2 (port $(cat "$d/port")) stopped" ;;
  start-node) d=$(node_dir "${2:?node number}"); start_one "$d" "$(cat "$d/port")"; say "node $2 (port $(cat "$d/port")) started" ;;
  *) say "usage: $0 start [N] | stop | status | stop-node I | start-node I"; exit 64 ;;
esac
