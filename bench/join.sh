#!/usr/bin/env bash
# How long a replica added to a running cluster takes to join: a local three-replica cluster
# (dev-cluster, TLS) is given MIB MiB of files through an `--exclusive` mount, then a fourth
# replica starts with a list of four (the others keep theirs) and is timed until its /health
# says ready (a voter of every partition, hearing from its leaders). Prints the time, what the
# new replica holds on disk, and its peak resident set. RUNS fresh clusters, one after another.
# Usage: bench/join.sh RUNS MIB [BIN_DIR]    (root, /dev/fuse; BIN_DIR default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=$1
MIB=$2
BIN=$(realpath "${3:-target/release}")
# shellcheck source=../scripts/cluster-lib.sh
. scripts/cluster-lib.sh
bench_setup join
NEW_PID=""
stop_new() { if [ -n "$NEW_PID" ]; then kill "$NEW_PID" 2>/dev/null; wait "$NEW_PID" 2>/dev/null || true; fi; NEW_PID=""; }
trap 'stop_new; bench_cleanup' EXIT

for run in $(seq "$RUNS"); do
  mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
  for i in $(seq "$MIB"); do head -c 1048576 /dev/urandom >"$MNT/f$((i % 64))"; done
  # syncfs hands the kernel's dirty pages to the daemon but never asks it to sync (the kernel
  # sends FUSE_SYNCFS to virtiofs only): an fsync of the root (fsyncdir) waits for the commits.
  sync -f "$MNT" && sync "$MNT"
  umount "$MNT"
  peers=()
  for r in 1 2 3 4; do
    peers+=(--peer "$r=127.0.0.1:$((BASE_PORT + 10 * r + 1)),127.0.0.1:$((BASE_PORT + 10 * r))")
  done
  rm -rf "$WORK/node-4"
  start=$(date +%s.%N)
  "$BIN/chain-server" run --id 4 --data "$WORK/node-4" --tls-dir "$WORK/cluster/certs" \
    --partitions 4 --metrics "127.0.0.1:$((BASE_PORT + 42))" "${peers[@]}" \
    >>"$WORK/node-4.log" 2>&1 &
  NEW_PID=$!
  until healthy $((BASE_PORT + 42)); do
    kill -0 "$NEW_PID" 2>/dev/null || { tail -20 "$WORK/node-4.log" >&2; exit 1; }
    sleep 0.05
  done
  end=$(date +%s.%N)
  hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$NEW_PID/status")
  held=$(du -sm "$WORK/node-4" | cut -f1)
  held_old=$(du -sm "$WORK/cluster/node-1" | cut -f1)
  printf 'run %d: %d MiB written (replica 1 holds %d MiB): joined in %.1f s, holding %d MiB, peak RSS %d MiB\n' \
    "$run" "$MIB" "$held_old" "$(echo "$end - $start" | bc)" "$held" "$hwm"
  stop_new
  stop_dev_cluster
done
