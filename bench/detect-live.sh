#!/usr/bin/env bash
# Crash detection on real sockets, Rampart beside HashiCorp memberlist, in the same run.
# usage: bench/detect-live.sh [NODES] [TRIALS]
# Builds memberlist's harness (bench/memberlist, from the Go module proxy) and Rampart, then runs both on
# 127.0.0.1: NODES members each, one killed per trial, timed until every survivor has declared it dead.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-5}; trials=${2:-5}
command -v go >/dev/null || { echo "go is needed to build the memberlist harness" >&2; exit 1; }
(cd bench/memberlist && go build -o "${TMPDIR:-/tmp}/rampart-memberlist-detect" .)
cargo build --release --quiet
./target/release/rampart detect live --nodes "$nodes" --trials "$trials" --port 37946
"${TMPDIR:-/tmp}/rampart-memberlist-detect" -nodes "$nodes" -trials "$trials" -port 47946
