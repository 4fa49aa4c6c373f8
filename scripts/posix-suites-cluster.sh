#!/usr/bin/env bash
# pjdfstest and fsx (scripts/posix-suites.sh) on an atefs mount whose chain lives on a local
# three-replica chain-server cluster (TLS, one process per replica, on 127.0.0.1).
# Usage: scripts/posix-suites-cluster.sh [FSX_OPS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BASE_PORT=${BASE_PORT:-7400}
DIR=$(mktemp -d /tmp/atefs-cluster.XXXXXX)

cleanup() {
  [ -n "${CLUSTER:-}" ] && kill "$CLUSTER" 2>/dev/null && wait "$CLUSTER" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# GET /health on a replica's metrics port answers 200 once its partitions have leaders.
healthy() {
  (
    exec 4<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET /health HTTP/1.1\r\nhost: x\r\n\r\n' >&4
    read -r status <&4
    [[ "$status" == *" 200 "* ]]
  ) 2>/dev/null
}

cargo build --release --locked -p chain-server -p atefs
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
"$BIN/chain-server" dev-cluster --dir "$DIR/cluster" --base-port "$BASE_PORT" >"$DIR/cluster.out" 2>"$DIR/cluster.log" &
CLUSTER=$!
# Ready once every replica reports a leader for every partition.
for i in $(seq 1 100); do
  ready=0
  for n in 1 2 3; do
    port=$((BASE_PORT + 10 * n + 2))
    healthy "$port" && ready=$((ready + 1))
  done
  [ "$ready" -eq 3 ] && break
  [ "$i" -eq 100 ] && { echo "the cluster did not become ready:"; tail -20 "$DIR/cluster.log"; exit 1; }
  sleep 0.1
done
"$BIN/atefs" keygen "$DIR/keys" >/dev/null
SERVERS="127.0.0.1:$((BASE_PORT + 10)),127.0.0.1:$((BASE_PORT + 20)),127.0.0.1:$((BASE_PORT + 30))"
export ATEFS_MOUNT_ARGS="--server $SERVERS --keys $DIR/keys --ca $DIR/cluster/certs/ca.pem"
echo "== on a three-replica cluster ($SERVERS)"
scripts/posix-suites.sh "${1:-100000}"
