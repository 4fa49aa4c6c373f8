#!/usr/bin/env bash
# What a backup off the cluster costs (`atefs backup`: the volume read into a cache and its
# sealed records written to one signed file; `atefs restore`: the file verified, then its
# records committed to a cluster that lost the volume) against a copy on the cluster
# (`atefs clone`). Per run: a fresh three-replica cluster of BIN_DIR's build, an `--exclusive`
# mount filled with one 512 MiB file (fio) and 2,000 files of 4 KiB, unmounted; the clone,
# the backup; then every replica goes and a fresh cluster takes the restore, and a mount of
# it reads the big file back (checked against the original's sha256). Prints seconds of each,
# MiB/s of the volume's data and the backup file's size; medians last.
# Usage: bench/backup.sh RUNS /ABSOLUTE/BIN_DIR [OUT_FILE, appended to]  (root; apt-get install fio)
set -euo pipefail
shopt -s inherit_errexit  # a failed command in $(...) ends the run too
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BIN=$2
OUT=${3:-/dev/null}
. scripts/cluster-lib.sh
bench_setup backup
for run in $(seq "$RUNS"); do
  mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
  servers=$(cluster_servers "$BASE_PORT")
  mib=$(fill_volume "$MNT")
  sum=$(sha256sum "$MNT/big" | cut -d' ' -f1)
  "$BIN/atefs" umount "$MNT"
  # The keys outlive the cluster (in Kubernetes: the volume's Secret).
  cp "$WORK/cluster/keys" "$WORK/keys"
  ca=$WORK/cluster/certs/ca.pem
  rm -f "$WORK/clone-keys" "$WORK/volume.backup"
  c=$(timed "$BIN/atefs" clone "$WORK/clone-keys" --keys "$WORK/keys" --server "$servers" --ca "$ca")
  b=$(timed "$BIN/atefs" backup "$WORK/volume.backup" --keys "$WORK/keys" --server "$servers" --ca "$ca")
  file_mib=$(du -m --apparent-size "$WORK/volume.backup" | cut -f1)
  stop_dev_cluster
  rm -rf "$WORK/cluster" "$WORK/cache"
  start_dev_cluster "$BIN/chain-server" "$WORK/cluster" "$BASE_PORT" "$WORK/cluster.log"
  ca=$WORK/cluster/certs/ca.pem
  r=$(timed "$BIN/atefs" restore "$WORK/volume.backup" --keys "$WORK/keys" --server "$servers" --ca "$ca")
  "$BIN/atefs" mount "$MNT" --data "$WORK/cache" --keys "$WORK/keys" --server "$servers" \
    --ca "$ca" --exclusive >>"$WORK/mount.log" 2>&1
  [ "$(sha256sum "$MNT/big" | cut -d' ' -f1)" = "$sum" ] || { echo "restored data differs" >&2; exit 1; }
  "$BIN/atefs" umount "$MNT"
  say "run $run volume data_MiB=$mib backup_file_MiB=$file_mib clone_s=$c backup_s=$b restore_s=$r clone_MiBps=$(echo "$mib / $c" | bc) backup_MiBps=$(echo "$mib / $b" | bc) restore_MiBps=$(echo "$mib / $r" | bc)"
  stop_dev_cluster
done
python3 - "$WORK/runs" <<'PY' | tee -a "$OUT"
import sys
sys.path.insert(0, "bench")
from run_medians import medians
m = medians(sys.argv[1])["volume"]
print(f"backup / clone time: {m['backup_s'] / m['clone_s']:.2f}; "
      f"restore / clone time: {m['restore_s'] / m['clone_s']:.2f}")
PY
