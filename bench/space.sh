#!/usr/bin/env bash
# What rewriting costs, in speed and in disk, against GlusterFS replica 3 in the same run:
# RUNS times, bench/rewrite-space.sh (a 256 MiB file rewritten 8 times over) on GlusterFS
# replica 3 (mounted by ../shared/bench/mount-peers.sh; bricks in /tmp/peerbench/gl) and on a
# fresh atefs cluster + exclusive mount of BIN_DIR's build. Prints every run, then medians.
# Usage: bench/space.sh RUNS /ABSOLUTE/BIN_DIR [OUT_FILE, appended to]  (root; fio, glusterfs-server)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=$1 BIN=$2 OUT=${3:-/dev/null}
. scripts/cluster-lib.sh
bench_setup space

for run in $(seq "$RUNS"); do
  SPACE_SERVERS="/tmp/peerbench/gl/b1 /tmp/peerbench/gl/b2 /tmp/peerbench/gl/b3" \
    PEERS_RESULTS="$WORK/gl" PEERS_SCRIPT="$(pwd)/bench/rewrite-space.sh" \
    ../shared/bench/mount-peers.sh -n 1 -s "$run" gluster >/dev/null 2>&1
  say "run $run gluster $(cat "$WORK/gl/gluster.run$run.out")"
  mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
  say "run $run atefs $(SPACE_SERVERS="$WORK/cluster/node-*" SPACE_CACHE="$WORK/cache" \
    bench/rewrite-space.sh "$MNT")"
  umount "$MNT"
  stop_dev_cluster
done
python3 - "$WORK/runs" <<'PY' | tee -a "$OUT"
import sys
sys.path.insert(0, "bench")
from run_medians import medians
med = medians(sys.argv[1])
g, a = med["gluster"], med["atefs"]
print(f"atefs/GlusterFS: rewrite speed {a['MiB/s'] / g['MiB/s']:.2f}x; "
      f"disk per server {a['server_max_MiB'] / g['server_max_MiB']:.2f}x "
      f"({a['server_max_MiB']:g} vs {g['server_max_MiB']:g} MiB for 256 MiB held, "
      f"2048 MiB written); atefs's mount cache {a['cache_MiB']:g} MiB")
PY
