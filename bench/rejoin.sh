#!/usr/bin/env bash
# A node rejoining under load: on a 3-node loopback cluster (64 partitions) n3 is killed with SIGKILL and left
# dead for 3 s (membership declares it dead), then `rampart bench` writes through n1 and n2 at 64 clients for 6 s
# and n3 is restarted on its data 2 s in. Prints the bench's line (errors, max latency) and the elections the
# partitions held meanwhile (the rise of the sum of their Raft terms on n1). Each trial on a fresh cluster.
# usage: bench/rejoin.sh [TRIALS] [WORKLOAD]      RAMPART_BIN=path measures another build.
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-3}; workload=${2:-kv}
# shellcheck source=bench/lib.sh
. bench/lib.sh
rampart_bench_setup
for t in $(seq "$trials"); do
  start_rampart
  sleep 3
  kill -9 "${pids[2]}"
  sleep 3
  before=$(metric_sum 1 rampart_raft_term)
  "$bin" bench --addr 127.0.0.1:7101,127.0.0.1:7102 --workload "$workload" --clients 64 --duration-s 6 \
    2>/dev/null >"$dir/bench.txt" &
  load=$!
  sleep 2
  start_node 3
  while kill -0 "$load" 2>/dev/null; do sleep 0.2; done
  echo "trial $t: $(grep -v '^$' "$dir/bench.txt")  elections while n3 rejoined: $(( $(metric_sum 1 rampart_raft_term) - before ))"
  reset_rampart
done
