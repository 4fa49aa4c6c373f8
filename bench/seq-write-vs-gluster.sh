#!/usr/bin/env bash
# The cluster's sequential write against GlusterFS replica 3 in one run: RUNS times, GlusterFS
# (mounted fresh by ../shared/bench/mount-peers.sh, measured by bench/seq-write.sh), then a
# fresh three-replica cluster with a fresh `--exclusive` mount of BIN_DIR's build (as
# bench/write-ab.sh). Prints every run, the medians and their ratio.
# Usage: bench/seq-write-vs-gluster.sh RUNS BIN_DIR   (root; apt-get install fio glusterfs-server)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=$1 BIN=$2
OUT=$(mktemp -d /tmp/atefs-vsgluster.XXXXXX)
gl=() at=()
for run in $(seq "$RUNS"); do
  PEERS_RESULTS="$OUT" PEERS_SCRIPT="$(pwd)/bench/seq-write.sh" \
    ../shared/bench/mount-peers.sh -n 1 -s "$run" gluster >/dev/null 2>&1
  gl+=("$(awk '$1 == "seq_write" {print $2}' "$OUT/gluster.run$run.out")")
  at+=("$(bench/write-ab.sh 1 "$BIN" 2>/dev/null | sed -n 's/.*median //p')")
  echo "run $run: gluster ${gl[-1]} MiB/s, atefs_cluster_rwo ${at[-1]} MiB/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
g=$(median "${gl[@]}") a=$(median "${at[@]}")
echo "gluster: ${gl[*]} MiB/s, median $g"
echo "atefs_cluster_rwo ($BIN): ${at[*]} MiB/s, median $a"
echo "ratio: $(python3 -c "print(round($a / $g, 2))")"
rm -rf "$OUT"
