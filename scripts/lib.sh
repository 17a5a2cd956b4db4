# Shared helpers for the scripts: free ports, starting and stopping nodes.
# Sourced, not run.

# A TCP port nobody listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_node PORT DIR MODULE [extra redis-server args...]: start redis-server
# with the module in the background and wait (at most 10 s) until it answers.
# Local nodes have no persistence, so the module's delayed rejoin would refuse
# grants for lock.max-ttl-ms after each start: off unless REJOIN_DELAY_MS is set.
start_node() {
  local port=$1 dir=$2 module=$3; shift 3
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --logfile "$dir/server.log" \
    --save "" --appendonly no --daemonize no --protected-mode no \
    --loadmodule "$module" rejoin-delay-ms "${REJOIN_DELAY_MS:-0}" "$@" >/dev/null 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 1 500); do
    if redis-cli -p "$port" PING 2>/dev/null | grep -q PONG; then return 0; fi
    sleep 0.02
  done
  echo "node on port $port did not start; log:" >&2
  cat "$dir/server.log" >&2 || true
  return 1
}

# Whether PID is running. A zombie (exited, not yet reaped: an orphaned node
# under an init that does not reap) is not.
running() {
  local stat; stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $stat != Z* ]]
}

stop_node() {
  local dir=$1
  [ -f "$dir/pid" ] || return 0
  local pid; pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 250); do running "$pid" || break; sleep 0.02; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
