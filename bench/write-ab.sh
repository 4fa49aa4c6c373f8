#!/usr/bin/env bash
# Same-run A/B of the cluster's sequential write: two or more builds (directories holding
# `atefs` and `chain-server`), each on a fresh three-replica cluster and a fresh `--exclusive`
# mount, interleaved RUNS times, the order rotating from run to run; fio writes 512 MiB in
# 1 MiB blocks with end_fsync=1 (the seq_write workload of ../shared/bench/peers.sh). Prints
# every run and the medians.
# Usage: bench/write-ab.sh RUNS BIN_DIR_A BIN_DIR_B [BIN_DIR...]    (root; apt-get install fio)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$(pwd)
RUNS=$1
shift
BUILDS=("$@")
WORK=$(mktemp -d /tmp/atefs-writeab.XXXXXX)
BASE_PORT=${BASE_PORT:-7600}
MNT=$WORK/mnt
# shellcheck source=../scripts/cluster-lib.sh
. "$ROOT_DIR/scripts/cluster-lib.sh"
cleanup() {
  grep -q " $MNT " /proc/mounts && umount -l "$MNT"
  stop_dev_cluster
  rm -rf "$WORK"
}
trap cleanup EXIT

one_run() { # bin_dir -> prints MiB/s
  local bin=$1 bw
  mount_dev_cluster "$bin" "$WORK" "$BASE_PORT" "$MNT"
  bw=$(bench/seq-write.sh "$MNT" | awk '{print $2}')
  umount "$MNT"
  for _ in $(seq 100); do pgrep -f "atefs mount $MNT" >/dev/null || break; sleep 0.1; done
  stop_dev_cluster
  echo "$bw"
}

declare -A got
n=${#BUILDS[@]}
for run in $(seq "$RUNS"); do
  # Each run starts with the next build: the second of two back-to-back runs was faster in
  # 12 of 15 pairs (session 33, bench/results/decode-pool-ab-20261207-s33.txt; 180 against
  # 168 MiB/s, medians), so a fixed order favoured the builds named last.
  for k in $(seq 0 $((n - 1))); do
    i=$(((run - 1 + k) % n))
    bw=$(one_run "${BUILDS[$i]}")
    got[$i]="${got[$i]:-} $bw"
    echo "run $run: ${BUILDS[$i]} $bw MiB/s" >&2
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
for i in "${!BUILDS[@]}"; do
  # shellcheck disable=SC2086 # the runs, one word each
  echo "${BUILDS[$i]}:${got[$i]} MiB/s, median $(median ${got[$i]})"
done
