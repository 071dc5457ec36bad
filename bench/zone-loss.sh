#!/usr/bin/env bash
# The loss of a whole site under load: six nodes on loopback in three zones (n1-n2 zone-a, n3-n4 zone-b, n5-n6
# zone-c, given in --initial-cluster), 64 partitions of 3 replicas, one in each zone.
# usage: bench/zone-loss.sh [TRIALS] [CLIENTS]     RAMPART_BIN=path measures another build.
# Each trial, on a fresh cluster: CLIENTS clients write through the four nodes of zone-b and zone-c for 10 s
# (`rampart bench --workload kv`, each request to its partition's leader as learnt from /v1/cluster, falling back
# to forwarding); 4 s in, both nodes of zone-a are killed with SIGKILL at once. Reported per trial: the longest
# time between two acknowledged writes (the window in which no write at all was acknowledged), the failed
# requests, and the throughput over the run.
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-3}; clients=${2:-64}
# shellcheck source=bench/lib.sh
. bench/lib.sh
rampart_bench_setup
zones=(x zone-a zone-a zone-b zone-b zone-c zone-c)
initial=$(for i in 1 2 3 4 5 6; do printf 'n%s=127.0.0.1:720%s@%s,' "$i" "$i" "${zones[$i]}"; done)
initial=${initial%,}
gaps=()
for t in $(seq "$trials"); do
  rm -rf "${dir:?}"/n*
  for i in 1 2 3 4 5 6; do
    "$bin" serve --id "n$i" --http "127.0.0.1:710$i" --peer "127.0.0.1:720$i" --data-dir "$dir/n$i" \
      --initial-cluster "$initial" --replace-after-ms 600000 >>"$dir/n$i.log" 2>&1 &
    pids[$((i - 1))]=$!
  done
  for _ in $(seq 300); do
    ok=1
    for i in 1 2 3 4 5 6; do curl -sf "127.0.0.1:710$i/readyz" >/dev/null || ok=0; done
    [ $ok = 1 ] && break
    sleep 0.1
  done
  [ $ok = 1 ] || { echo "the cluster did not become ready; logs in $dir" >&2; exit 1; }
  "$bin" bench --addr 127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105,127.0.0.1:7106 --workload kv \
    --clients "$clients" --duration-s 10 --prefix "zone-$t" --json >"$dir/t$t.json" 2>/dev/null &
  bench=$!
  sleep 4
  kill -9 "${pids[0]}" "${pids[1]}"
  { wait "${pids[0]}" "${pids[1]}"; } 2>/dev/null || true
  wait $bench
  python3 - "$dir/t$t.json" "$t" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"trial {sys.argv[2]}: zone-a (n1, n2) killed; longest gap between acknowledged writes {round(d['longest_gap_ms'])} ms, "
      f"{d['errors']} failed requests, {round(d['throughput_per_s'])} writes/s, p99 {d['p99_ms']:.1f} ms")
EOF
  gaps+=("$(python3 -c "import json; print(round(json.load(open('$dir/t$t.json'))['longest_gap_ms']))")")
  stop_rampart
done
printf '%s\n' "${gaps[@]}" | sort -n | python3 -c 'import sys; v=[int(x) for x in sys.stdin]; print(f"window after the loss of a zone, over {len(v)} trials: median {v[len(v)//2]} ms, worst {v[-1]} ms")'
