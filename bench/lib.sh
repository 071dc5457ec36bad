# Shared by the bench scripts: a 3-node Rampart cluster on 127.0.0.1:7101-7103 (HTTP) and 7201-7203 (peers).
# Needs $bin (the rampart binary) and $dir (a scratch directory); fills the pids array for the caller's cleanup.

# The binary to measure (RAMPART_BIN, else a fresh release build), a scratch directory and the cleanup of both
# on exit. Call from the repository root.
rampart_bench_setup() {
  if [ -z "${RAMPART_BIN:-}" ]; then cargo build --release --quiet; fi
  bin=${RAMPART_BIN:-$PWD/target/release/rampart}
  dir=$(mktemp -d)
  pids=()
  trap 'stop_rampart; rm -rf "$dir"' EXIT
}

# Stops the nodes this script started (SIGTERM, then SIGKILL after 10 s) and waits until they are gone, so that
# the next run finds their ports free.
stop_rampart() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.2
}

# Stops the nodes and removes their data and logs, so that the next start_rampart founds a fresh cluster.
reset_rampart() {
  stop_rampart
  pids=()
  rm -rf "${dir:?}"/n*
}

# Starts (or restarts, on its data) node N of the cluster, with any further settings; its PID goes to pids[N-1].
start_node() {
  local i=$1; shift
  "$bin" serve --id "n$i" --http "127.0.0.1:710$i" --peer "127.0.0.1:720$i" --data-dir "$dir/n$i" \
    --initial-cluster "n1=127.0.0.1:7201,n2=127.0.0.1:7202,n3=127.0.0.1:7203" "$@" >>"$dir/n$i.log" 2>&1 &
  pids[$((i - 1))]=$!
}

start_rampart() {
  for i in 1 2 3; do start_node "$i" "$@"; done
  wait_ready
}

# Waits until all three nodes are ready (each has a leader for every partition it holds).
wait_ready() {
  for _ in $(seq 200); do
    local ok=1
    for i in 1 2 3; do curl -sf "127.0.0.1:710$i/readyz" >/dev/null || ok=0; done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  echo "the Rampart cluster did not become ready; logs in $dir" >&2
  return 1
}

# The sum over node N's partitions of a per-partition metric (`NAME{partition="..."} value` lines of /metrics).
metric_sum() {
  curl -s "127.0.0.1:710$1/metrics" | awk -v name="$2{" 'index($0, name) == 1 {s += $2} END {print s + 0}'
}
