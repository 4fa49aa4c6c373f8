#!/usr/bin/env bash
# Whether the old versions leave the replicas' disks after `atefs rekey`: a fresh three-replica
# cluster of BIN_DIR's build, an `--exclusive` mount filled with one 512 MiB file (fio) and
# unmounted; then the rekey, and two replicas' data directories (du) every 2 s for SECS
# seconds. Before `Compact` (session 31) they stayed at twice the data.
# Usage: bench/rekey-space.sh /ABSOLUTE/BIN_DIR [SECS] [OUT_FILE, appended to]  (root; fio)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
BIN=$1
SECS=${2:-20}
OUT=${3:-/dev/null}
. scripts/cluster-lib.sh
bench_setup rekey-space
say() { echo "$*" | tee -a "$OUT"; }
mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
servers=$(cluster_servers "$BASE_PORT")
ca=$WORK/cluster/certs/ca.pem
fio --name=fill --filename="$MNT/big" --rw=write --bs=1M --size=512M --end_fsync=1 >/dev/null
"$BIN/atefs" umount "$MNT"
replicas() { echo "node-1=$(du -sm "$WORK/cluster/node-1" | cut -f1) node-2=$(du -sm "$WORK/cluster/node-2" | cut -f1)"; }
say "before the rekey: $(replicas) MiB"
t0=$(date +%s.%N)
RUST_LOG=warn "$BIN/atefs" rekey "$WORK/new-keys" --keys "$WORK/cluster/keys" \
  --server "$servers" --ca "$ca" >/dev/null
say "rekey: $(echo "$(date +%s.%N) - $t0" | bc) s"
for i in $(seq 0 2 "$SECS"); do
  say "t+${i}s: $(replicas) MiB"
  sleep 2
done
stop_dev_cluster
