#!/usr/bin/env bash
# Commit latency (p50/p99) and throughput against a local three-replica chain-server cluster
# (TLS, fdatasync on every replica), RUNS times per case; a fresh cluster for every run.
# Raw output: bench/results/cluster-<time>/<case>.<run>. Usage: bench/cluster.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${1:-3}
SECS=${2:-10}
BASE_PORT=${BASE_PORT:-7600}
OUT=$ROOT/bench/results/cluster-$(date -u +%Y%m%d-%H%M)
mkdir -p "$OUT"
cargo build --release --locked -p chain-server -p bench >/dev/null
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
# shellcheck source=../scripts/cluster-lib.sh
. "$ROOT/scripts/cluster-lib.sh"
DIR=""
stop() {
  stop_dev_cluster
  [ -n "$DIR" ] && rm -rf "$DIR"
  DIR=""
}
trap stop EXIT
start() {
  DIR=$(mktemp -d /tmp/atefs-benchcluster.XXXXXX)
  start_dev_cluster "$BIN/chain-server" "$DIR" "$BASE_PORT" "$DIR.log"
}
SERVERS=$(cluster_servers "$BASE_PORT")
cases=(
  "commit4k-w1|--writers 1 --size 4096"
  "commit4k-w16|--writers 16 --size 4096"
  "commit4k-w64|--writers 64 --size 4096"
  "commit1m-w8|--writers 8 --size 1048576"
)
{ uname -srvm; nproc; git -C "$ROOT" rev-parse HEAD; } >"$OUT/env.txt"
for run in $(seq 1 "$RUNS"); do
  for c in "${cases[@]}"; do
    name=${c%%|*}; args=${c#*|}
    echo "[cluster] run $run/$RUNS: $name" >&2
    start
    # shellcheck disable=SC2086
    "$BIN/cluster-bench" --server "$SERVERS" --ca "$DIR/certs/ca.pem" --seconds "$SECS" $args >"$OUT/$name.$run"
    stop
  done
done
python3 - "$OUT" <<'PY'
import sys, os, statistics, collections
out = sys.argv[1]
vals = collections.defaultdict(lambda: collections.defaultdict(list))
for f in sorted(os.listdir(out)):
    if "." not in f or f == "env.txt":
        continue
    case = f.rsplit(".", 1)[0]
    for line in open(os.path.join(out, f)):
        m, v, u = line.split()
        vals[case][(m, u)].append(float(v))
print("| case | tx/s | p50 ms | p99 ms | MiB/s | runs |")
print("|---|---|---|---|---|---|")
for case, ms in vals.items():
    med = {m: statistics.median(v) for (m, _), v in ms.items()}
    runs = " / ".join(f"{v:.0f}" for v in ms[("throughput", "tx/s")])
    print(f"| {case} | {med['throughput']:.0f} | {med['latency_p50']:.2f} | {med['latency_p99']:.2f} | {med['bandwidth']:.1f} | {runs} |")
PY
