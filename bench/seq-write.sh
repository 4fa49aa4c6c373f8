#!/usr/bin/env bash
# The seq_write workload of ../shared/bench/peers.sh alone (fio, 1 MiB blocks, 512 MiB file,
# end_fsync=1) on a mounted DIR; prints `seq_write VALUE MiB/s` like peers.sh. Used as
# mount-peers.sh's PEERS_SCRIPT to time GlusterFS on this workload only.
# Usage: bench/seq-write.sh DIR
set -euo pipefail
W="$1/peerbench.$$"
mkdir -p "$W"
trap 'rm -rf "$W"' EXIT
bw=$(fio --name=seq_write --filename="$W/seq.dat" --rw=write --bs=1M --size=512M --end_fsync=1 \
  --output-format=json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw"]/1024,1))')
echo "seq_write $bw MiB/s"
