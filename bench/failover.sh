#!/usr/bin/env bash
# Unavailability after `kill -9` of a partition leader under load, on a 3-node loopback cluster.
# usage: bench/failover.sh [TRIALS] [PARTITIONS]     RAMPART_BIN=path measures another build.
# Each trial: one client writes one key as fast as it is acknowledged (through a node that does not lead the key's
# partition), the leader of that partition is killed with SIGKILL 1.5 s in, and the longest time between two
# acknowledged writes is the unavailability window. The killed node is restarted on its data before the next trial.
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-10}; parts=${2:-64}
# shellcheck source=bench/lib.sh
. bench/lib.sh
rampart_bench_setup
start_rampart --partitions "$parts"
gaps=()
for t in $(seq "$trials"); do
  key="failover-$t-0"
  part=$(curl -s -XPUT "127.0.0.1:7101/v1/kv/$key" -H 'content-type: application/json' -d '{"value":"0"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["partition"])')
  leader=$(curl -s 127.0.0.1:7101/v1/cluster | python3 -c "import json,sys; print(json.load(sys.stdin)['partitions'][$part]['leader'][1:])")
  via=$(( leader % 3 + 1 ))
  "$bin" bench --addr "127.0.0.1:710$via" --route any --clients 1 --keys 1 --prefix "failover-$t" --duration-s 4 --json >"$dir/t$t.json" 2>/dev/null &
  bench=$!
  sleep 1.5
  kill -9 "${pids[$((leader - 1))]}"
  wait $bench
  gap=$(python3 -c "import json; d=json.load(open('$dir/t$t.json')); print(round(d['longest_gap_ms'])) " )
  echo "trial $t: partition $part, killed leader n$leader, longest gap between acknowledged writes ${gap} ms"
  gaps+=("$gap")
  start_node "$leader" --partitions "$parts"
  wait_ready
done
printf '%s\n' "${gaps[@]}" | sort -n | python3 -c 'import sys; v=[int(x) for x in sys.stdin]; print(f"unavailability window over {len(v)} kills: median {v[len(v)//2]} ms, worst {v[-1]} ms")'
