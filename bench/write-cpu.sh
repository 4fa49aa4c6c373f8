#!/usr/bin/env bash
# The cluster's sequential write once, with what it cost: a fresh three-replica cluster and
# `--exclusive` mount of BIN_DIR's build, fio 512 MiB (as bench/write-ab.sh), measured by
# bench/seq-write-cost.sh: MiB/s, CPU seconds of the three replicas (proc1) and of the mount
# (proc2) while fio ran, the machine's CPU and idle seconds, the disk's busy seconds and MiB.
# CPU seconds move less than throughput on this shared machine.
# Usage: bench/write-cpu.sh /ABSOLUTE/BIN_DIR   (root; apt-get install fio)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1
WORK=$(mktemp -d /tmp/atefs-cpu.XXXXXX)
BASE_PORT=$(. scripts/cluster-lib.sh && free_base_port "${BASE_PORT:-7800}")
MNT=$WORK/mnt
. scripts/cluster-lib.sh
cleanup() { grep -q " $MNT " /proc/mounts && umount -l "$MNT"; stop_dev_cluster; rm -rf "$WORK"; }
trap cleanup EXIT
mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
bench/seq-write-cost.sh "$MNT" "$BIN/chain-server run" "atefs mount $MNT"
umount "$MNT"
