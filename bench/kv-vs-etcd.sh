#!/usr/bin/env bash
# Durable replicated kv writes: Rampart (3 nodes, loopback) beside etcd (3 members, loopback), in one run.
# usage: bench/kv-vs-etcd.sh [SECONDS] [CLIENTS...]     e.g. bench/kv-vs-etcd.sh 10 1 16 64
#   ORDER=rampart-first runs Rampart before etcd (etcd first by default): alternate the two to see what the order
#   of the runs does on a noisy machine. REPLICAS=1 runs Rampart with one replica per partition (no replication:
#   the ceiling replication is measured against, not a configuration to deploy). PARTITIONS="1 4 16 64" measures a
#   fresh Rampart cluster created with each of these partition counts in turn (64 alone by default), each after a
#   line naming it, so that one run sets etcd beside them all.
# Needs the shared peer scripts (../shared/peers): etcd-server from Debian's packages and the peer load generator
# (built here into /tmp/peer-loadgen; it needs protoc). 256-byte values, 100000 keys, each client sequential.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; shift || true
clients=("$@"); [ ${#clients[@]} -gt 0 ] || clients=(1 16 64)
peers=$(cd ../shared/peers && pwd)
command -v protoc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler; }
cargo build --release --quiet --manifest-path "$peers/loadgen/Cargo.toml" --target-dir /tmp/peer-loadgen
cargo build --release --quiet
bin=$PWD/target/release/rampart
# shellcheck source=bench/lib.sh
. bench/lib.sh
etcd_dir=$(mktemp -d); dir=$(mktemp -d)
pids=()
cleanup() { "$peers/etcd-cluster.sh" stop "$etcd_dir" >/dev/null 2>&1 || true; stop_rampart; rm -rf "$dir" "$etcd_dir"; }
trap cleanup EXIT

run_etcd() {
  "$peers/etcd-cluster.sh" start "$etcd_dir"
  for c in "${clients[@]}"; do
    /tmp/peer-loadgen/release/peer-loadgen etcd-put --endpoints=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
      --concurrency="$c" --duration="$secs" --val-size=256 --key-space=100000
  done
  "$peers/etcd-cluster.sh" stop "$etcd_dir"
}
run_rampart() {
  local p
  for p in ${PARTITIONS:-64}; do
    echo "rampart partitions=$p replicas=${REPLICAS:-3}"
    start_rampart --replicas "${REPLICAS:-3}" --partitions "$p"
    for c in "${clients[@]}"; do
      "$bin" bench --addr 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --clients "$c" --duration-s "$secs" \
        --keys 100000 --value-bytes 256 2>/dev/null
    done
    reset_rampart
  done
}
case "${ORDER:-etcd-first}" in
  etcd-first) run_etcd; run_rampart ;;
  rampart-first) run_rampart; run_etcd ;;
  *) echo "ORDER is etcd-first or rampart-first" >&2; exit 2 ;;
esac
