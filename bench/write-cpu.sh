#!/usr/bin/env bash
# The cluster's sequential write once, with the CPU time it cost: a fresh three-replica cluster
# and `--exclusive` mount of BIN_DIR's build, fio 512 MiB (as bench/write-ab.sh); prints
# `MiB/s  replicas-CPU-s  mount-CPU-s` (utime+stime of the three chain-server processes and of
# the mount while fio ran). CPU seconds move less than throughput on this shared machine.
# Usage: bench/write-cpu.sh /ABSOLUTE/BIN_DIR   (root; apt-get install fio)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1
WORK=$(mktemp -d /tmp/atefs-cpu.XXXXXX)
BASE_PORT=7800
MNT=$WORK/mnt
. scripts/cluster-lib.sh
cleanup() { grep -q " $MNT " /proc/mounts && umount -l "$MNT"; stop_dev_cluster; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$MNT"
start_dev_cluster "$BIN/chain-server" "$WORK/cluster" "$BASE_PORT" "$WORK/cluster.log"
"$BIN/atefs" keygen "$WORK/cluster/keys" >/dev/null
"$BIN/atefs" mount "$MNT" --data "$WORK/cache" --keys "$WORK/cluster/keys" \
    --server "$(cluster_servers "$BASE_PORT")" --ca "$WORK/cluster/certs/ca.pem" --exclusive >>"$WORK/mount.log" 2>&1
cpu() { local t=0; for p in $(pgrep -f "$1"); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
s0=$(cpu "$BIN/chain-server"); m0=$(cpu "atefs mount $MNT")
bw=$(fio --name=seq --filename="$MNT/seq" --rw=write --bs=1M --size=512M --end_fsync=1 --output-format=json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw"]/1024,1))')
s1=$(cpu "$BIN/chain-server"); m1=$(cpu "atefs mount $MNT")
hz=$(getconf CLK_TCK)
echo "$bw $(python3 -c "print(round(($s1-$s0)/$hz,2), round(($m1-$m0)/$hz,2))")"
umount "$MNT"
