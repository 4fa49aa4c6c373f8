#!/usr/bin/env bash
# Peak memory (VmHWM) of the atefs mount daemon while 2 GiB are written to one file and
# fsynced, RUNS times (a fresh volume each). Usage: bench/memory.sh [RUNS]   (root, /dev/fuse)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${1:-3}
cargo build --release --locked -p atefs >/dev/null
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/atefs"
W=$(mktemp -d /tmp/atefs-mem.XXXXXX)
trap 'umount "$W/m" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/m"
dd if=/dev/urandom of="$W/src" bs=1M count=256 status=none
for run in $(seq 1 "$RUNS"); do
  "$BIN" mount "$W/m" --data "$W/d" >/dev/null 2>&1
  pid=$(pgrep -f "atefs mount $W/m --data $W/d --foreground")
  start=$(date +%s.%N)
  for _ in 1 2 3 4 5 6 7 8; do cat "$W/src"; done | dd of="$W/m/big" bs=1M iflag=fullblock status=none
  sync "$W/m/big"
  end=$(date +%s.%N)
  hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
  echo "run $run: peak $((hwm / 1024)) MiB, 2 GiB written and fsynced in $(python3 -c "print(round($end - $start, 2))") s"
  "$BIN" umount "$W/m" >/dev/null
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -rf "$W/d"
done
