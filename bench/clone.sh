#!/usr/bin/env bash
# What a copy of a shared volume costs: `atefs clone` (the controller's copy for CSI clones and
# snapshots) against copying the same files through two mounts (`cp -a` into a second volume,
# then syncfs and an fsync of the root), the way to copy a volume without it. Per run: a fresh three-replica cluster of
# BIN_DIR's build, an `--exclusive` mount filled with one 512 MiB file (fio, as seq_write) and
# 2,000 files of 4 KiB; then the two copies, alternated in order between runs. Prints seconds
# and MiB/s of each, and their ratio; medians last.
# Usage: bench/clone.sh RUNS /ABSOLUTE/BIN_DIR   (root; apt-get install fio)
set -euo pipefail
shopt -s inherit_errexit  # a failed command in $(...) ends the run too
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BIN=$2
WORK=$(mktemp -d /tmp/atefs-clone.XXXXXX)
BASE_PORT=$(. scripts/cluster-lib.sh && free_base_port "${BASE_PORT:-7900}")
MNT=$WORK/mnt
DST=$WORK/dst
. scripts/cluster-lib.sh
cleanup() {
  for m in "$MNT" "$DST"; do grep -q " $m " /proc/mounts && umount -l "$m"; done
  stop_dev_cluster
  [ -n "${KEEP_LOG:-}" ] && cp "$WORK/clone.log" "$KEEP_LOG"
  rm -rf "$WORK"
}
trap cleanup EXIT
declare -a CLONE CP
for run in $(seq "$RUNS"); do
  mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
  servers=$(cluster_servers "$BASE_PORT")
  ca=$WORK/cluster/certs/ca.pem
  mib=$(fill_volume "$MNT")
  # syncfs hands the kernel's dirty pages to the daemon but never asks it to sync (the kernel
  # sends FUSE_SYNCFS to virtiofs only): an fsync of the root (fsyncdir) waits for the commits.
  sync -f "$MNT" && sync "$MNT"
  clone_once() {
    rm -f "$WORK/clone-keys"
    local t0
    t0=$(now)
    RUST_LOG=${RUST_LOG:-warn} "$BIN/atefs" clone "$WORK/clone-keys" --keys "$WORK/cluster/keys" --server "$servers" \
      --ca "$ca" >>"$WORK/clone.log" 2>&1
    echo "$(now) - $t0" | bc
  }
  cp_once() {
    rm -f "$WORK/dst-keys"
    rm -rf "$WORK/dst-cache"
    mkdir -p "$DST"
    "$BIN/atefs" keygen "$WORK/dst-keys" >/dev/null
    "$BIN/atefs" mount "$DST" --data "$WORK/dst-cache" --keys "$WORK/dst-keys" \
      --server "$servers" --ca "$ca" --exclusive >>"$WORK/mount.log" 2>&1
    local t0 t
    t0=$(now)
    cp -a "$MNT/." "$DST/"
    # syncfs hands the kernel's dirty pages to the daemon but never asks it to sync (the kernel
    # sends FUSE_SYNCFS to virtiofs only): an fsync of the root (fsyncdir) waits for the commits.
    sync -f "$DST" && sync "$DST"
    t=$(echo "$(now) - $t0" | bc)
    umount "$DST"
    echo "$t"
  }
  if [ $((run % 2)) -eq 1 ]; then c=$(clone_once); p=$(cp_once); else p=$(cp_once); c=$(clone_once); fi
  CLONE+=("$c")
  CP+=("$p")
  printf 'run %d: %d MiB; atefs clone %.2f s (%.0f MiB/s), cp -a through mounts %.2f s (%.0f MiB/s), %.2fx\n' \
    "$run" "$mib" "$c" "$(echo "$mib / $c" | bc -l)" "$p" "$(echo "$mib / $p" | bc -l)" "$(echo "$p / $c" | bc -l)"
  umount "$MNT"
  stop_dev_cluster
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
mc=$(median "${CLONE[@]}")
mp=$(median "${CP[@]}")
printf 'median of %d: atefs clone %.2f s, cp -a through mounts %.2f s: clone %.2fx as fast\n' "$RUNS" "$mc" "$mp" "$(echo "$mp / $mc" | bc -l)"
