#!/usr/bin/env bash
# Durable hot-SKU flash sale: Rampart (3 nodes, 3 replicas, loopback) beside PostgreSQL (one node, default durable
# settings, pgbench: conditional UPDATE ... WHERE stock >= 1 plus an order INSERT in one transaction), one run.
# usage: bench/flash-sale-vs-postgres.sh [SECONDS] [CLIENTS...]     e.g. bench/flash-sale-vs-postgres.sh 10 1 8 64
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

"$peers/postgres-flash-sale.sh" hot "$secs" "${clients[@]}"

start_rampart --replicas "${REPLICAS:-3}"
for c in "${clients[@]}"; do
  "$bin" bench --addr 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --workload flash-sale --clients "$c" --duration-s "$secs" 2>/dev/null
done
