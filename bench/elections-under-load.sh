#!/usr/bin/env bash
# Elections nothing called for: the sum of the partitions' Raft terms on n1 before and after 64-client load
# (kv, then the flash sale) on a fresh 3-node cluster. Any increase is a leader change under load.
# usage: bench/elections-under-load.sh [LOAD_SECONDS]   (RAMPART_BIN=path measures another build)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
# shellcheck source=bench/lib.sh
. bench/lib.sh
rampart_bench_setup
start_rampart
sleep 2
before=$(metric_sum 1 rampart_raft_term)
addr=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
"$bin" bench --addr "$addr" --workload kv --clients 64 --duration-s "$secs" 2>/dev/null
"$bin" bench --addr "$addr" --workload flash-sale --clients 64 --duration-s "$secs" 2>/dev/null
after=$(metric_sum 1 rampart_raft_term)
echo "partition terms summed on n1: $before before the load, $after after: $((after - before)) elections under load"
