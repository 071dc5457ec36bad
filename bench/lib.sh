# Shared by the bench scripts: a 3-node Rampart cluster on 127.0.0.1:7101-7103 (HTTP) and 7201-7203 (peers).
# Needs $bin (the rampart binary) and $dir (a scratch directory); fills the pids array for the caller's cleanup.

start_rampart() {
  local ic="n1=127.0.0.1:7201,n2=127.0.0.1:7202,n3=127.0.0.1:7203"
  for i in 1 2 3; do
    "$bin" serve --id "n$i" --http "127.0.0.1:710$i" --peer "127.0.0.1:720$i" --data-dir "$dir/n$i" --initial-cluster "$ic" "$@" >>"$dir/n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 200); do
    local ok=1
    for i in 1 2 3; do curl -sf "127.0.0.1:710$i/readyz" >/dev/null || ok=0; done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  echo "the Rampart cluster did not become ready; logs in $dir" >&2
  return 1
}
