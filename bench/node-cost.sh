#!/usr/bin/env bash
# What a 3-node cluster (64 partitions unless PARTITIONS says otherwise) costs: CPU of the idle nodes, then kv writes and hot-SKU orders at 64 clients.
# usage: bench/node-cost.sh [IDLE_SECONDS] [LOAD_SECONDS]
#   RAMPART_BIN=path measures another build; PARTITIONS=n another partition count (64 by default).
# Idle CPU is the nodes' user+system clock ticks (/proc/PID/stat; 100 ticks = one core busy for a second); resident
# memory is the three nodes' VmRSS summed, idle and after the load.
set -euo pipefail
cd "$(dirname "$0")/.."
idle=${1:-5}; secs=${2:-10}
# shellcheck source=bench/lib.sh
. bench/lib.sh
rampart_bench_setup

ticks() { local t=0; for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
rss_mib() { local k=0; for p in "${pids[@]}"; do k=$((k + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $((k / 1024)); }
start_rampart --partitions "${PARTITIONS:-64}"
sleep 3
t0=$(ticks); sleep "$idle"; t1=$(ticks)
echo "idle: $((t1 - t0)) ticks in ${idle} s over 3 nodes ($(( (t1 - t0) / (3 * idle) ))% of a core per node), resident $(rss_mib) MiB"
addr=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
"$bin" bench --addr "$addr" --workload kv --clients 64 --duration-s "$secs" 2>/dev/null
"$bin" bench --addr "$addr" --workload flash-sale --clients 64 --duration-s "$secs" 2>/dev/null
echo "resident after the load: $(rss_mib) MiB over 3 nodes"
