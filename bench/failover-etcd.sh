#!/usr/bin/env bash
# The peer of bench/failover.sh: a 3-member etcd on loopback (etcd's default timing), a put every 10 ms, SIGKILL
# of the leader 2 s in; the longest time between two acknowledged puts. Fresh cluster per trial.
# usage: bench/failover-etcd.sh [TRIALS]      (needs ../shared/peers and the peer load generator, built on demand)
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-5}
peers=$(cd ../shared/peers && pwd)
cargo build --release --quiet --manifest-path "$peers/loadgen/Cargo.toml" --target-dir /tmp/peer-loadgen
dir=$(mktemp -d)
trap '"$peers/etcd-cluster.sh" stop "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
gaps=()
for t in $(seq "$trials"); do
  "$peers/etcd-cluster.sh" start "$dir" >/dev/null
  /tmp/peer-loadgen/release/peer-loadgen etcd-failover --duration=6 --prefix="fo/run$t/" >"$dir/out" 2>&1 &
  load=$!
  sleep 2
  leader=$("$peers/etcd-cluster.sh" leader "$dir")
  n=${leader##*:2379}
  kill -9 "$(cat "$dir/e$n.pid")"
  rm -f "$dir/e$n.pid"  # so that stopping the cluster never signals a recycled pid
  wait $load
  gap=$(sed -n 's/.*max_gap_ms=\([0-9.]*\).*/\1/p' "$dir/out")
  echo "trial $t: killed e$n; $(cat "$dir/out")"
  gaps+=("${gap%.*}")
  "$peers/etcd-cluster.sh" stop "$dir" >/dev/null 2>&1 || true
done
printf '%s\n' "${gaps[@]}" | sort -n | python3 -c 'import sys; v=[int(x) for x in sys.stdin]; print(f"etcd unavailability window over {len(v)} kills: median {v[len(v)//2]} ms, worst {v[-1]} ms")'
