#!/usr/bin/env bash
# Page faults of the cluster's first sequential write: a fresh three-replica cluster and
# `--exclusive` mount of BIN_DIR's build, the seq_write workload (bench/seq-write.sh), and
# around it the machine's transparent huge page faults (/proc/vmstat thp_fault_alloc: each
# zeroes 2 MiB) and, per process (replicas in pid order, then the mount), its minor faults
# and resident memory before and after.
# Usage: bench/write-faults.sh /ABSOLUTE/BIN_DIR   (root; apt-get install fio)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1
. scripts/cluster-lib.sh
bench_setup faults
mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT" >/dev/null
pids=$(pgrep -f "$BIN/chain-server run|atefs mount $MNT")
snap() { # -> "minflt:rss_kib ..." per process, then the machine's THP faults
  local p
  for p in $pids; do
    echo -n "$(awk '{print $10}' "/proc/$p/stat"):$(awk '/VmRSS/{print $2}' "/proc/$p/status") "
  done
  awk '$1 == "thp_fault_alloc" {print $2}' /proc/vmstat
}
before=$(snap)
bw=$(bench/seq-write.sh "$MNT")
after=$(snap)
python3 - "$before" "$after" "$bw" <<'PY'
import sys
a, b = sys.argv[1].split(), sys.argv[2].split()
procs = []
for x, y in zip(a[:-1], b[:-1]):
    f0, r0 = map(int, x.split(":"))
    f1, r1 = map(int, y.split(":"))
    procs.append(f"minflt+{f1 - f0} rss {r0 // 1024}->{r1 // 1024} MiB")
print(sys.argv[3], "| thp_faults", int(b[-1]) - int(a[-1]), "|", " | ".join(procs))
PY
