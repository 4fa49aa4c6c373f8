#!/usr/bin/env bash
# pjdfstest and fsx (scripts/posix-suites.sh) on an atefs mount whose chain lives on a local
# three-replica chain-server cluster (TLS, one process per replica, on 127.0.0.1).
# Usage: scripts/posix-suites-cluster.sh [FSX_OPS] [MOUNT_OPTION ...]   (e.g. --exclusive)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BASE_PORT=${BASE_PORT:-7400}
DIR=$(mktemp -d /tmp/atefs-cluster.XXXXXX)
# shellcheck source=cluster-lib.sh
. "$ROOT/scripts/cluster-lib.sh"

cleanup() {
  stop_dev_cluster
  rm -rf "$DIR"
}
trap cleanup EXIT

# The binaries of `make unit`'s build (cargo test builds them with the features
# the tests unify; `cargo build -p` would rebuild them with fewer, for minutes): no work after it.
cargo test --profile "${PROFILE:-ci}" --workspace --locked --no-run 2>&1 | grep -v '^ *Executable'
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/${PROFILE:-ci}"
BASE_PORT=$(free_base_port "$BASE_PORT")
start_dev_cluster "$BIN/chain-server" "$DIR/cluster" "$BASE_PORT" "$DIR/cluster.log"
"$BIN/atefs" keygen "$DIR/keys" >/dev/null
SERVERS=$(cluster_servers "$BASE_PORT")
export ATEFS_MOUNT_ARGS="--server $SERVERS --keys $DIR/keys --ca $DIR/cluster/certs/ca.pem ${*:2}"
echo "== on a three-replica cluster ($SERVERS) ${*:2}"
scripts/posix-suites.sh "${1:-100000}"
