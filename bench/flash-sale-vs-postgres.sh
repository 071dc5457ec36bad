#!/usr/bin/env bash
# Durable hot-SKU flash sale: Rampart (3 nodes, 3 replicas, loopback) beside PostgreSQL (one node, default durable
# settings, pgbench: conditional UPDATE ... WHERE stock >= 1 plus an order INSERT in one transaction), one run.
# usage: bench/flash-sale-vs-postgres.sh [SECONDS] [CLIENTS...]     e.g. bench/flash-sale-vs-postgres.sh 10 1 8 64
#   Each round ends with the ratio: Rampart's orders/s at the last client count given over PostgreSQL's best.
#   ROUNDS=N runs N rounds (PostgreSQL, then a fresh Rampart cluster, each time) and ends with the ratios' median:
#   this machine's speed moves between runs, and both peers with it.
#   REPLICAS=1 runs Rampart with one replica per partition (no replication: the ceiling replication is measured
#   against, not a configuration to deploy).
# Needs root for PostgreSQL (the shared peer script installs Debian's postgresql when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; shift || true
clients=("$@"); [ ${#clients[@]} -gt 0 ] || clients=(1 8 64)
peers=$(cd ../shared/peers && pwd)
cargo build --release --quiet
bin=$PWD/target/release/rampart
# shellcheck source=bench/lib.sh
. bench/lib.sh
dir=$(mktemp -d)
pids=()
cleanup() { stop_rampart; rm -rf "$dir"; }
trap cleanup EXIT

rounds=${ROUNDS:-1}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS is a whole number of rounds, at least 1, not '$rounds'" >&2; exit 2; }
ratios=()
for r in $(seq "$rounds"); do
  "$peers/postgres-flash-sale.sh" hot "$secs" "${clients[@]}" | tee "$dir/postgres.out"
  start_rampart --replicas "${REPLICAS:-3}"
  for c in "${clients[@]}"; do
    "$bin" bench --addr 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --workload flash-sale --clients "$c" \
      --duration-s "$secs" 2>/dev/null | tee "$dir/rampart.out"
  done
  reset_rampart
  best=$(sed -nE 's/.* tps=([0-9.]+) .*/\1/p' "$dir/postgres.out" | sort -g | tail -1)
  ours=$(sed -nE 's/.* = ([0-9]+)\/s .*/\1/p' "$dir/rampart.out")
  [ -n "$best" ] && [ -n "$ours" ] || { echo "round $r: no rate to compare (PostgreSQL '$best', Rampart '$ours')" >&2; exit 1; }
  ratio=$(awk -v a="$ours" -v b="$best" 'BEGIN { printf "%.3f", a / b }')
  ratios+=("$ratio")
  echo "round $r: Rampart at ${clients[-1]} clients $ours orders/s, PostgreSQL's best $best tps: ${ratio}x"
done
if [ "$rounds" -gt 1 ]; then
  sorted=$(printf '%s\n' "${ratios[@]}" | sort -g | tr '\n' ' ')
  median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  echo "ratio over $rounds rounds: ${sorted}(median ${median}x)"
fi
