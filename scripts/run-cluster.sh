#!/usr/bin/env bash
# Start a 3-node durakv cluster on loopback with its data under ./data/, print how to connect, and
# stop all three on Ctrl-C. Data persists: running it again resumes the same cluster.
#   usage: scripts/run-cluster.sh <path to the durakv binary>
set -euo pipefail
bin=${1:?usage: run-cluster.sh <durakv binary>}
data=${DURAKV_DATA:-./data}
base_resp=${DURAKV_RESP_PORT:-6379}
base_peer=${DURAKV_PEER_PORT:-7379}

peers=""
for i in 1 2 3; do
  peers+="$i=127.0.0.1:$((base_peer + i - 1)),127.0.0.1:$((base_resp + i - 1));"
done

# A port already taken would stop that node at start-up with a clear error; say so before starting.
for port in $base_resp $((base_resp + 1)) $((base_resp + 2)) $base_peer $((base_peer + 1)) $((base_peer + 2)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is already in use (another durakv or redis-server?)." >&2
    echo "stop it, or pick other ports: DURAKV_RESP_PORT=16379 DURAKV_PEER_PORT=17379 make run" >&2
    exit 1
  fi
done

mkdir -p "$data"
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping the cluster (SIGTERM)..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  echo "stopped. Data is kept in $data/ (remove it for a fresh cluster)."
}
trap stop INT TERM EXIT

for i in 1 2 3; do
  "$bin" --id "$i" --peers "$peers" --data-dir "$data/node$i" >>"$data/node$i.log" 2>&1 &
  pids+=($!)
done

# Wait until a leader is elected (INFO on node 1 names one), or a node dies.
leader=""
for _ in $(seq 1 100); do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "a node exited at start-up; its log:" >&2
      tail -n 20 "$data"/node*.log >&2
      exit 1
    fi
  done
  if command -v redis-cli >/dev/null; then
    leader=$( (redis-cli -p "$base_resp" info 2>/dev/null || true) | tr -d '\r' | sed -n 's/^leader_resp_addr://p')
    [ -n "$leader" ] && break
  else
    sleep 1 && break
  fi
  sleep 0.1
done

cat <<MSG
durakv: 3-node cluster running on loopback (data in $data/, logs in $data/node{1,2,3}.log)
  node 1: redis-cli -p $base_resp      node 2: redis-cli -p $((base_resp + 1))      node 3: redis-cli -p $((base_resp + 2))
  leader: ${leader:-electing...}   (any node accepts any command; followers forward to the leader)
  try:    redis-cli -p $base_resp set k v && redis-cli -p $((base_resp + 2)) get k
          redis-cli -p $base_resp info
          redis-benchmark -p $base_resp -t set,get -n 100000 -c 50
Ctrl-C stops all three.
MSG
wait
