#!/usr/bin/env bash
# The seq_write workload (bench/seq-write.sh: fio, 1 MiB blocks, 512 MiB, end_fsync=1) on a
# mounted DIR, with what it cost the machine while fio ran: the CPU seconds of the processes
# whose command lines match each PATTERN (utime+stime), of the whole machine (user+sys, every
# core) and the seconds it sat idle or waiting for I/O, and the disk's busy seconds and MiB
# written (/proc/diskstats of DISK, default vda: the one disk everything here lives on).
# Prints one line of name=value pairs; usable as ../shared/bench/mount-peers.sh's
# PEERS_SCRIPT (patterns then come from SEQ_COST_PROCS, space-separated, `_` for a space).
# Usage: bench/seq-write-cost.sh DIR [PATTERN...]
set -euo pipefail
DIR=$1
shift
if [ $# -eq 0 ] && [ -n "${SEQ_COST_PROCS:-}" ]; then
  read -r -a pats <<<"$SEQ_COST_PROCS"
  set -- "${pats[@]//_/ }"
fi
DISK=${DISK:-vda}
HERE=$(dirname "$0")
pid_ticks() { # pattern -> "pid:utime+stime" of every matching process
  local p
  for p in $(pgrep -f "$1"); do
    awk -v p="$p" '{printf "%s:%d ", p, $14 + $15}' "/proc/$p/stat" 2>/dev/null || true
  done
}
machine() { # -> "busy-ticks idle-ticks disk-busy-ms disk-sectors"
  awk '/^cpu /{printf "%d %d ", $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat
  awk -v d="$DISK" '$3 == d {print $13, $10}' /proc/diskstats
}
before=() after=()
for pat in "$@"; do before+=("$(pid_ticks "$pat")"); done
m0=$(machine)
bw=$("$HERE/seq-write.sh" "$DIR" | awk '{print $2}')
m1=$(machine)
for pat in "$@"; do after+=("$(pid_ticks "$pat")"); done
python3 - "$bw" "$(getconf CLK_TCK)" "$m0" "$m1" "${before[@]}" -- "${after[@]}" <<'PY'
import sys
bw, hz, m0, m1 = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rest = sys.argv[5:]
cut = rest.index("--")
pairs = lambda s: dict(p.split(":") for p in s.split())
out = [f"MiB/s={bw}"]
# Per process, so that one that ended meanwhile (an earlier mount on its way out) counts nothing.
for i, (b, a) in enumerate(zip(rest[:cut], rest[cut + 1:])):
    b, a = pairs(b), pairs(a)
    ticks = sum(int(t) - int(b.get(p, 0)) for p, t in a.items())
    out.append(f"proc{i + 1}_cpu_s={ticks / hz:.2f}")
d = [int(y) - int(x) for x, y in zip(m0.split(), m1.split())]
out += [f"machine_cpu_s={d[0] / hz:.2f}", f"idle_s={d[1] / hz:.2f}",
        f"disk_busy_s={d[2] / 1000:.2f}", f"disk_MiB={d[3] // 2048}"]
print(" ".join(out))
PY
