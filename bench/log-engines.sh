#!/usr/bin/env bash
# Raft log storage candidates, append+fsync with 1, 16 and 64 groups per sync: redb as the node lays it out, redb
# keyed by one append sequence, raft-engine, and a plain append-only file with fdatasync (the floor).
# usage: bench/log-engines.sh [SECONDS_PER_CASE] [ENTRY_BYTES]      (files go to $TMPDIR, like the clusters')
# A cargo project of its own (bench/log-engines), so that the candidates stay out of the product's build.
set -euo pipefail
cd "$(dirname "$0")/log-engines"
cargo build --release --quiet --target-dir /tmp/log-engines-target
/tmp/log-engines-target/release/log-engines "${1:-4}" "${2:-300}"
