#!/usr/bin/env bash
# How long a mount that fell behind the cluster's log takes to catch up while mounted: a local
# three-replica cluster (dev-cluster, TLS), a writer (`--exclusive`) and a second, shared
# mount of the same volume; the second mount's daemon is frozen (SIGSTOP) while the writer
# rewrites 64 files of 1 MiB until MIB MiB are written (the cluster compacts past the frozen
# mount), then continued and timed until an open of the last file rewritten reads its new
# content (the open waits until the cache has what the cluster has: here through the
# cluster's image, which the mount takes while mounted). Prints the time, whether the cache
# took an image, what the cache holds and the daemon's peak resident set. RUNS fresh clusters.
# Usage: bench/thaw.sh RUNS MIB [BIN_DIR]    (root, /dev/fuse; BIN_DIR default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=$1
MIB=$2
BIN=$(realpath "${3:-target/release}")
# shellcheck source=../scripts/cluster-lib.sh
. scripts/cluster-lib.sh
bench_setup thaw
FROZEN=$WORK/frozen
FROZEN_PID=""
thaw_cleanup() {
  if [ -n "$FROZEN_PID" ]; then kill -CONT "$FROZEN_PID" 2>/dev/null || true; fi
  if grep -q " $FROZEN " /proc/mounts; then umount -l "$FROZEN"; fi
  bench_cleanup
}
trap thaw_cleanup EXIT

for run in $(seq "$RUNS"); do
  mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
  rm -rf "$WORK/frozen-cache"
  mkdir -p "$FROZEN"
  "$BIN/atefs" mount "$FROZEN" --data "$WORK/frozen-cache" --keys "$WORK/cluster/keys" \
    --server "$(cluster_servers "$BASE_PORT")" --ca "$WORK/cluster/certs/ca.pem" \
    >>"$WORK/frozen.log" 2>&1
  echo "before" >"$MNT/f0"
  # syncfs hands the kernel's dirty pages to the daemon but never asks it to sync (the kernel
  # sends FUSE_SYNCFS to virtiofs only): an fsync of the root (fsyncdir) waits for the commits.
  sync -f "$MNT" && sync "$MNT"
  ls "$FROZEN" >/dev/null # an opendir looks at the cluster (close-to-open); a lookup does not
  [ "$(cat "$FROZEN/f0")" = "before" ]
  FROZEN_PID=$(pgrep -f "atefs mount $FROZEN" | head -1)
  kill -STOP "$FROZEN_PID"
  for i in $(seq "$MIB"); do head -c 1048576 /dev/urandom >"$MNT/f$((i % 64))"; done
  last=$((MIB % 64))
  # syncfs hands the kernel's dirty pages to the daemon but never asks it to sync (the kernel
  # sends FUSE_SYNCFS to virtiofs only): an fsync of the root (fsyncdir) waits for the commits.
  sync -f "$MNT" && sync "$MNT"
  want=$(md5sum <"$MNT/f$last")
  start=$(date +%s.%N)
  kill -CONT "$FROZEN_PID"
  until [ "$(md5sum <"$FROZEN/f$last" 2>/dev/null)" = "$want" ]; do
    kill -0 "$FROZEN_PID" 2>/dev/null || { tail -20 "$WORK/frozen.log" >&2; exit 1; }
    sleep 0.05
  done
  end=$(date +%s.%N)
  hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$FROZEN_PID/status")
  images=$(find "$WORK/frozen-cache" -name 'snap-*.snap' | wc -l)
  held=$(du -sm "$WORK/frozen-cache" | cut -f1)
  printf 'run %d: %d MiB written while frozen: caught up in %.1f s (images taken: %d), cache %d MiB, peak RSS %d MiB\n' \
    "$run" "$MIB" "$(echo "$end - $start" | bc)" "$images" "$held" "$hwm"
  FROZEN_PID=""
  umount "$FROZEN"
  umount "$MNT"
  stop_dev_cluster
done
