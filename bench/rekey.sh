#!/usr/bin/env bash
# What new keys for a shared volume cost (`atefs rekey`: the owners swapped, every record sealed
# again in place) against a copy of it under new keys (`atefs clone`, the other way to leave a
# leaked key behind). Per run: a fresh three-replica cluster of BIN_DIR's build, an
# `--exclusive` mount filled with one 512 MiB file (fio) and 2,000 files of 4 KiB, unmounted;
# then the clone and the rekey, alternated in order between runs. Prints seconds of each and
# MiB/s of the volume's data, and one replica's data directory (du) before and after the
# rekey; medians last.
# Usage: bench/rekey.sh RUNS /ABSOLUTE/BIN_DIR [OUT_FILE, appended to]  (root; apt-get install fio)
set -euo pipefail
shopt -s inherit_errexit  # a failed command in $(...) ends the run too
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BIN=$2
OUT=${3:-/dev/null}
. scripts/cluster-lib.sh
bench_setup rekey
for run in $(seq "$RUNS"); do
  mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
  servers=$(cluster_servers "$BASE_PORT")
  ca=$WORK/cluster/certs/ca.pem
  mib=$(fill_volume "$MNT")
  # Unmounting commits what the mount holds (and a rekey refuses a mounted volume).
  "$BIN/atefs" umount "$MNT"
  keys=$WORK/cluster/keys
  # Each with the keys that open the volume at that point (the clone after the rekey needs
  # the new ones); a failed command ends the benchmark (set -e).
  clone_once() {
    rm -f "$WORK/clone-keys"
    timed "$BIN/atefs" clone "$WORK/clone-keys" --keys "$1" --server "$servers" --ca "$ca"
  }
  rekey_once() {
    timed "$BIN/atefs" rekey "$WORK/new-keys" --keys "$keys" --server "$servers" --ca "$ca"
  }
  node_mib() { du -sm "$WORK/cluster/node-1" | cut -f1; }
  before=$(node_mib)
  if [ $((run % 2)) -eq 1 ]; then
    c=$(clone_once "$keys")
    r=$(rekey_once)
  else
    r=$(rekey_once)
    c=$(clone_once "$WORK/new-keys")
  fi
  rm -f "$WORK/new-keys"
  after=$(node_mib)
  say "run $run volume data_MiB=$mib rekey_s=$r clone_s=$c rekey_MiBps=$(echo "$mib / $r" | bc) clone_MiBps=$(echo "$mib / $c" | bc) replica_MiB_before=$before replica_MiB_after=$after"
  stop_dev_cluster
done
python3 - "$WORK/runs" <<'PY' | tee -a "$OUT"
import sys
sys.path.insert(0, "bench")
from run_medians import medians
m = medians(sys.argv[1])["volume"]
print(f"rekey / clone time: {m['rekey_s'] / m['clone_s']:.2f}")
PY
