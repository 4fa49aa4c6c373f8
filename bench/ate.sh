#!/usr/bin/env bash
# ate benchmarks: runs every case RUNS times, interleaved, and prints medians as a markdown table.
# Usage: bench/ate.sh [RUNS] [SECONDS]   (results are pasted into docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-5}
cargo build --release --locked -p bench --bin ate-bench >/dev/null
B=target/release/ate-bench
# Raw outputs are kept next to the summary so every figure can be traced to a run.
out=bench/results/ate-$(date -u +%Y%m%d-%H%M)
mkdir -p "$out"
cases=(
  "commit4k-local|commit --writers 64 --size 4096 --seconds $SECS --mode local"
  "commit4k-remote|commit --writers 64 --size 4096 --seconds $SECS --mode remote"
  "commit4k-presigned|commit --writers 64 --size 4096 --seconds $SECS --mode presigned"
  "commit1m-local|commit --writers 8 --size 1048576 --seconds $SECS --mode local"
  "commit1m-remote|commit --writers 8 --size 1048576 --seconds $SECS --mode remote"
  "crypto1m|crypto --size 1048576 --iters 200"
  "crypto4k|crypto --size 4096 --iters 20000"
)
for run in $(seq 1 "$RUNS"); do
  for c in "${cases[@]}"; do
    name=${c%%|*}; args=${c#*|}
    echo "run $run/$RUNS: $name" >&2
    # shellcheck disable=SC2086
    $B $args >"$out/$name.$run" 2>/dev/null
  done
done
uname -r >"$out/env.txt"; nproc >>"$out/env.txt"; grep -m1 'model name' /proc/cpuinfo >>"$out/env.txt"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { grep -h -- "$2" "$out"/$1.* | sed -E "s#.*$3.*#\1#" | median; }
echo "| case | median | runs |"
echo "|---|---|---|"
for c in commit4k-local commit4k-remote commit4k-presigned commit1m-local commit1m-remote; do
  tps=$(field $c "tx/s" '= ([0-9.]+) tx/s')
  mib=$(field $c "MiB/s" ', ([0-9.]+) MiB/s')
  p50=$(field $c "p50" 'p50 ([0-9.]+) ms')
  p99=$(field $c "p99" 'p99 ([0-9.]+) ms')
  cpu=$(field $c "CPU per tx" '; ([0-9.]+) us CPU')
  all=$(grep -h -o '= [0-9]* tx/s' "$out"/$c.* | tr -d '=' | tr '\n' ' ')
  echo "| $c | $tps tx/s, $mib MiB/s, p50 $p50 ms, p99 $p99 ms, $cpu µs CPU/tx | $all |"
done
for c in crypto1m crypto4k; do
  for op in "seal+sign" "hash+verify" "open"; do
    us=$(field $c "^$op " ': +([0-9.]+) us/op')
    gib=$(field $c "^$op " 'us/op +([0-9.]+) GiB/s')
    echo "| $c $op | $us µs/op, $gib GiB/s | |"
  done
done
