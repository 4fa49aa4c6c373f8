#!/usr/bin/env bash
# What this machine allows a three-replica sequential write, measured in one run: RUNS times,
# (1) the disk alone: fio writing three 512 MiB files at once (the replicas' three copies),
# O_DIRECT 8 MiB writes and buffered writes with a final fsync; (2) GlusterFS replica 3
# (mounted by ../shared/bench/mount-peers.sh) and (3) a fresh atefs cluster + mount of BIN_DIR's
# build, both on bench/seq-write-cost.sh (MiB/s, CPU seconds of servers and client, of the whole
# machine, idle seconds, disk busy seconds and MiB), in alternating order. Prints every run,
# then medians.
# With WARM=1 each file system writes a first 512 MiB file before the one measured
# (bench/seq-write-warm-cost.sh): their steady state rather than a new one's first write.
# Usage: bench/ceilings.sh RUNS /ABSOLUTE/BIN_DIR [OUT_FILE, appended to]  (root; fio, glusterfs-server)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=$1 BIN=$2 OUT=${3:-/dev/null}
COST=bench/seq-write-cost.sh
if [ "${WARM:-0}" = 1 ]; then COST=bench/seq-write-warm-cost.sh; fi
. scripts/cluster-lib.sh
bench_setup ceilings

disk() { # fio args -> aggregate MiB/s of three 512 MiB writers
  mkdir -p "$WORK/disk"
  fio --name=disk --directory="$WORK/disk" --rw=write --size=512M --numjobs=3 \
    --group_reporting --output-format=json "$@" |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw"]/1024,1))'
  rm -rf "$WORK/disk"
}

# Not a pipeline: the loop starts clusters, and the EXIT trap can only stop the one it knows.
gluster_run() {
  PEERS_RESULTS="$WORK/gl" PEERS_SCRIPT="$(pwd)/$COST" \
    SEQ_COST_PROCS="glusterfsd glusterfs_--process-name_fuse" \
    ../shared/bench/mount-peers.sh -n 1 -s "$1" gluster >/dev/null 2>&1
  say "run $1 gluster $(cat "$WORK/gl/gluster.run$1.out")"
}
atefs_run() {
  mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
  say "run $1 atefs $("$COST" "$MNT" "$BIN/chain-server run" "atefs mount $MNT")"
  umount "$MNT"
  stop_dev_cluster
}
for run in $(seq "$RUNS"); do
  say "run $run disk-direct MiB/s=$(disk --bs=8M --direct=1)"
  say "run $run disk-buffered MiB/s=$(disk --bs=1M --end_fsync=1)"
  # The order alternates: of two back-to-back writes the second was the faster in 12 of 15
  # pairs (session 33, bench/results/decode-pool-ab-20261207-s33.txt); until session 33
  # atefs always ran second.
  if [ $((run % 2)) -eq 1 ]; then
    gluster_run "$run"
    atefs_run "$run"
  else
    atefs_run "$run"
    gluster_run "$run"
  fi
done
python3 - "$WORK/runs" <<'PY' | tee -a "$OUT"
import sys
sys.path.insert(0, "bench")
from run_medians import medians
med = medians(sys.argv[1])
g, a = med["gluster"], med["atefs"]
target = 2 * g["MiB/s"]
secs = 512 / target
print(f"2x GlusterFS = {target:.0f} MiB/s: 512 MiB in {secs:.2f} s, which on 2 cores is "
      f"{2 * secs:.2f} CPU-s for everything, and {3 * 512 / secs:.0f} MiB/s of disk for three "
      f"copies (the disk alone: {med['disk-direct']['MiB/s']:g} direct, "
      f"{med['disk-buffered']['MiB/s']:g} buffered)")
for w, m in (("gluster", g), ("atefs", a)):
    print(f"{w}: {m['machine_cpu_s']:.2f} CPU-s of the machine per 512 MiB "
          f"(servers {m['proc1_cpu_s']:.2f}, client {m['proc2_cpu_s']:.2f}), "
          f"disk busy {m['disk_busy_s']:.2f} s for {m['disk_MiB']:g} MiB")
PY
