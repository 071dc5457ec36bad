#!/usr/bin/env bash
# Failover of quiesced partitions: on an idle 3-node loopback cluster (64 partitions, all quiesced), a node is
# killed with SIGKILL, and the window is the time from the kill until 200 keys spread over every partition have
# all been written through a survivor (each key retried every 10 ms until acknowledged). The node is restarted on
# its data and the cluster left to quiesce again (--quiesce-after-ms 300, so trials need not wait long) before the
# next trial; the victim goes round n1, n2, n3.
# usage: bench/failover-idle.sh [TRIALS]      RAMPART_BIN=path measures another build; QUIESCE_AFTER_MS=0 measures
# the same idle cluster with quiescence off (partitions awake, heartbeating).
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-6}
quiesce_after=${QUIESCE_AFTER_MS:-300}
# shellcheck source=bench/lib.sh
. bench/lib.sh
rampart_bench_setup
all_quiesced() {
  if [ "$quiesce_after" = 0 ]; then sleep 3; return 0; fi
  for _ in $(seq 300); do
    local ok=1
    for i in 1 2 3; do [ "$(metric_sum "$i" rampart_raft_quiesced)" = 64 ] || ok=0; done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  echo "the partitions did not all quiesce; logs in $dir" >&2
  return 1
}
start_rampart --quiesce-after-ms "$quiesce_after"
windows=()
for t in $(seq "$trials"); do
  all_quiesced
  victim=$(( (t - 1) % 3 + 1 )); via=$(( victim % 3 + 1 ))
  led=$(metric_sum "$victim" rampart_raft_is_leader)
  kill -9 "${pids[$((victim - 1))]}"
  ms=$(python3 - "$via" "$t" <<'PY'
import sys, threading, time, urllib.request
via, trial = sys.argv[1], sys.argv[2]
start = time.monotonic(); done = []
def put(k):
    while True:
        req = urllib.request.Request(f"http://127.0.0.1:710{via}/v1/kv/idle-{trial}-{k}", data=b'{"value":"x"}',
                                     method="PUT", headers={"content-type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=5).read()
            break
        except Exception:
            time.sleep(0.01)
    done.append(time.monotonic() - start)
threads = [threading.Thread(target=put, args=(k,)) for k in range(200)]
for th in threads: th.start()
for th in threads: th.join()
print(round(max(done) * 1000))
PY
)
  echo "trial $t: killed n$victim (leading $led partitions): every partition written ${ms} ms after the kill"
  windows+=("$ms")
  start_node "$victim" --quiesce-after-ms "$quiesce_after"
  sleep 1
done
sorted=$(printf '%s\n' "${windows[@]}" | sort -n)
n=${#windows[@]}
echo "windows (ms): $(echo "$sorted" | tr '\n' ' ')"
echo "median $(echo "$sorted" | sed -n "$(( (n + 1) / 2 ))p") ms, worst $(echo "$sorted" | tail -1) ms over $n kills"
