#!/usr/bin/env bash
# Two or more builds measured in turn on one workload, each on a fresh 3-node cluster: on a shared, noisy machine a
# change is judged by pairs run side by side, not by runs from different hours.
# usage: bench/paired.sh WORKLOAD SECONDS ROUNDS NAME=BINARY...
#   e.g. bench/paired.sh flash-sale 8 3 before=/tmp/rampart-before after=target/release/rampart
# Each round runs every build once, in the order given, `rampart bench --workload WORKLOAD --clients 64`, and prints
# its rate, p99 and the three nodes' CPU per acknowledged request (user+system ticks from /proc/PID/stat, in µs),
# which moves less with the machine's noise than the rate does; and the nodes' mean resident memory at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n 4,7p "$0" >&2; exit 2; }
workload=$1 secs=$2 rounds=$3
shift 3
# shellcheck source=bench/lib.sh
. bench/lib.sh

ticks() { local t=0; for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }

measure() {
  local name=$1
  bin=$2 dir=$(mktemp -d) pids=()
  start_rampart
  sleep 2
  local t0 line t1 ok
  t0=$(ticks)
  line=$("$bin" bench --addr 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --workload "$workload" --clients 64 \
    --duration-s "$secs" --json 2>/dev/null)
  t1=$(ticks)
  local rss=0
  for p in "${pids[@]}"; do rss=$((rss + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done
  stop_rampart
  rm -rf "$dir"
  ok=$(echo "$line" | sed -E 's/.*"ok":([0-9]+).*/\1/')
  echo "$line" | awk -v name="$name" -v r="$round" -v ticks=$((t1 - t0)) -v ok="$ok" -v rss="$rss" '{
    match($0, /"throughput_per_s":[0-9.]+/); rate = substr($0, RSTART + 19, RLENGTH - 19)
    match($0, /"p99_ms":[0-9.]+/); p99 = substr($0, RSTART + 9, RLENGTH - 9)
    match($0, /"max_ms":[0-9.]+/); mx = substr($0, RSTART + 9, RLENGTH - 9)
    printf "%s round %d: %.0f/s  p99 %.2f ms  max %.1f ms  nodes %d ticks = %.0f us of CPU per request  resident %.0f MiB a node\n", name, r, rate, p99, mx, ticks, ticks * 10000 / ok, rss / 3 / 1024
  }'
}

trap 'stop_rampart' EXIT
for round in $(seq "$rounds"); do
  for build in "$@"; do
    measure "${build%%=*}" "${build#*=}"
  done
done
