#!/usr/bin/env bash
# Same-run A/B of the embedded mount's sequential write and read: two or more `atefs`
# binaries, each on a fresh state directory, interleaved RUNS times. fio writes 512 MiB in
# 1 MiB blocks with end_fsync=1, then (after a remount, so nothing comes from the daemon's
# block cache either, and drop_caches after it, since the remount's replay reads the log)
# reads it back from the disk: the seq_write and seq_read workloads of
# ../shared/bench/peers.sh. Prints every run and the medians.
# Usage: bench/embedded-ab.sh RUNS ATEFS_A ATEFS_B [ATEFS...]    (root; apt-get install fio)
set -euo pipefail
RUNS=$1
shift
BINS=("$@")
WORK=$(mktemp -d /tmp/atefs-embab.XXXXXX)
MNT=$WORK/mnt
cleanup() {
  grep -q " $MNT " /proc/mounts && umount -l "$MNT"
  rm -rf "$WORK"
}
trap cleanup EXIT

fio_bw() { # rw -> MiB/s
  fio --name=seq --filename="$MNT/seq" --rw="$1" --bs=1M --size=512M --end_fsync=1 \
    --output-format=json |
    python3 -c "import json,sys; print(round(json.load(sys.stdin)['jobs'][0]['$1']['bw']/1024,1))"
}

unmount() {
  umount "$MNT"
  for _ in $(seq 100); do pgrep -f "atefs mount $MNT" >/dev/null || return 0; sleep 0.1; done
}

one_run() { # binary -> prints "write read"
  local bin=$1 w r
  rm -rf "$WORK/state"; mkdir -p "$MNT"
  "$bin" mount "$MNT" --data "$WORK/state" >>"$WORK/mount.log" 2>&1
  w=$(fio_bw write)
  unmount
  echo 3 >/proc/sys/vm/drop_caches
  "$bin" mount "$MNT" --data "$WORK/state" >>"$WORK/mount.log" 2>&1
  echo 3 >/proc/sys/vm/drop_caches
  r=$(fio_bw read)
  unmount
  echo "$w $r"
}

declare -A WRITES READS
for run in $(seq "$RUNS"); do
  for b in "${BINS[@]}"; do
    read -r w r < <(one_run "$b")
    WRITES[$b]+="$w "; READS[$b]+="$r "
    echo "run $run $b: write $w MiB/s, read $r MiB/s" >&2
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
for b in "${BINS[@]}"; do
  echo "$b: seq write ${WRITES[$b]}-> median $(echo "${WRITES[$b]}" | median) MiB/s;" \
    "seq read ${READS[$b]}-> median $(echo "${READS[$b]}" | median) MiB/s"
done
