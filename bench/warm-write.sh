#!/usr/bin/env bash
# The cluster's sequential write into a warm cluster: a fresh three-replica cluster and
# `--exclusive` mount of BIN_DIR's build, fio writes a first 512 MiB file (kept, so nothing is
# compacted meanwhile), then bench/seq-write-cost.sh measures the seq_write workload on a
# second one: MiB/s and CPU seconds as bench/write-cpu.sh prints them. bench/write-cpu.sh
# measures a new cluster's first write, whose processes touch all their memory for the
# first time; this one the steady state a long-running cluster is in.
# Usage: bench/warm-write.sh /ABSOLUTE/BIN_DIR   (root; apt-get install fio)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1
. scripts/cluster-lib.sh
bench_setup warm
mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
bench/seq-write-warm-cost.sh "$MNT" "$BIN/chain-server run" "atefs mount $MNT"
