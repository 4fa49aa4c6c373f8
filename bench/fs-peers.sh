#!/usr/bin/env bash
# Runs ../shared/bench/peers.sh (the peers' workload set) on atefs and, in the same session,
# on the raw disk, bindfs (tuned) and gocryptfs, RUNS times interleaved; every file system is
# fresh and empty for every run. Raw output: bench/results/fs-<time>/<fs>.run<k>.out; the
# summary (medians, ratios) is printed by bench/summarize.py.
# Usage: bench/fs-peers.sh [RUNS] [fs ...]    (root; apt-get install fio bindfs gocryptfs)
# fs: disk bindfs_tuned gocryptfs atefs (default), atefs_cluster (a mount of a chain on a
# local three-replica chain-server cluster, TLS), atefs_cluster_rwo (the same, mounted
# --exclusive: the single-writer mode of ReadWriteOnce volumes) and gluster (GlusterFS
# replica 3 on this host, mounted by ../shared/bench/mount-peers.sh; apt-get install
# glusterfs-server).
set -u
cd "$(dirname "$0")/.."
ROOT_DIR=$(pwd)
RUNS=${1:-3}; shift || true
FSLIST=("$@"); [ ${#FSLIST[@]} -eq 0 ] && FSLIST=(disk bindfs_tuned gocryptfs atefs)
PEERS=${PEERS_SCRIPT:-$ROOT_DIR/../shared/bench/peers.sh}
WORK=/tmp/atefs-fsbench
OUT=$ROOT_DIR/bench/results/fs-$(date -u +%Y%m%d-%H%M)
export PEERS_TARBALL=${PEERS_TARBALL:-/tmp/peerbench/src.tar}
mkdir -p "$WORK"/{mnt,back} "$OUT" "$(dirname "$PEERS_TARBALL")"
[ -s "$PEERS_TARBALL" ] || tar -cf "$PEERS_TARBALL" -C /usr/lib/google-cloud-sdk/lib surface
cargo build --release --locked -p atefs -p chain-server >/dev/null 2>&1 || { echo "build failed" >&2; exit 1; }
ATEFS="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release/atefs"
CHAIN_SERVER="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release/chain-server"
FSPID=""; MNT=""
BASE_PORT=${BASE_PORT:-7500}

wait_mounted() { # dir: poll /proc/mounts (the peers' daemons give no readiness signal)
  for _ in $(seq 100); do grep -q " $1 " /proc/mounts && return 0; sleep 0.1; done; return 1
}
# shellcheck source=../scripts/cluster-lib.sh
. "$ROOT_DIR/scripts/cluster-lib.sh"
start_cluster() {
  rm -rf "$WORK/cluster"
  start_dev_cluster "$CHAIN_SERVER" "$WORK/cluster" "$BASE_PORT" "$OUT/atefs_cluster.log"
}
stop_cluster() { stop_dev_cluster; rm -rf "$WORK/cluster"; }
mount_fs() {
  case $1 in
    disk) MNT=$WORK/disk; rm -rf "$MNT"; mkdir -p "$MNT" ;;
    bindfs_tuned)
      MNT=$WORK/mnt/bindfs; mkdir -p "$MNT"; rm -rf "$WORK/back/bindfs"; mkdir -p "$WORK/back/bindfs"
      bindfs -f -o big_writes --multithreaded "$WORK/back/bindfs" "$MNT" >>"$OUT/bindfs.log" 2>&1 &
      FSPID=$!; wait_mounted "$MNT" ;;
    gocryptfs)
      MNT=$WORK/mnt/gocryptfs; mkdir -p "$MNT"; rm -rf "$WORK/back/gc"; mkdir -p "$WORK/back/gc"
      echo "not-a-secret" >"$WORK/gc.pass"
      gocryptfs -init -q -passfile "$WORK/gc.pass" "$WORK/back/gc" >>"$OUT/gocryptfs.log" 2>&1
      gocryptfs -fg -nosyslog -q -passfile "$WORK/gc.pass" "$WORK/back/gc" "$MNT" >>"$OUT/gocryptfs.log" 2>&1 &
      FSPID=$!; wait_mounted "$MNT" ;;
    atefs)
      MNT=$WORK/mnt/atefs; mkdir -p "$MNT"; rm -rf "$WORK/back/atefs"
      "$ATEFS" mount "$MNT" --data "$WORK/back/atefs" >>"$OUT/atefs.log" 2>&1 ;;
    atefs_cluster|atefs_cluster_rwo)
      start_cluster || return 1
      local extra=(); [ "$1" = atefs_cluster_rwo ] && extra=(--exclusive)
      MNT=$WORK/mnt/$1; mkdir -p "$MNT"; rm -rf "$WORK/back/$1"
      "$ATEFS" keygen "$WORK/cluster/keys" >/dev/null
      "$ATEFS" mount "$MNT" --data "$WORK/back/$1" --keys "$WORK/cluster/keys" \
        --server "$(cluster_servers "$BASE_PORT")" \
        --ca "$WORK/cluster/certs/ca.pem" "${extra[@]}" >>"$OUT/$1.log" 2>&1 ;;
  esac
}
umount_fs() {
  case $1 in
    disk) rm -rf "$MNT" ;;
    *) umount "$MNT" 2>/dev/null || umount -l "$MNT"
       [ -n "$FSPID" ] && wait "$FSPID" 2>/dev/null; FSPID=""
       # atefs: wait for the daemon to release its volume lock before deleting it.
       for _ in $(seq 100); do pgrep -f "atefs mount $MNT" >/dev/null || break; sleep 0.1; done
       rm -rf "$WORK/back/"*
       case $1 in atefs_cluster*) stop_cluster ;; esac ;;
  esac
}
cleanup() {
  [ -n "$MNT" ] && grep -q " $MNT " /proc/mounts && umount -l "$MNT"
  [ -n "$FSPID" ] && kill "$FSPID" 2>/dev/null
  stop_cluster
}
trap cleanup EXIT

{ uname -srvm; nproc; free -m | awk '/Mem:/{print $2 " MiB"}'; fio --version; bindfs --version 2>&1 | head -1
  gocryptfs --version 2>&1 | head -1; git -C "$ROOT_DIR" rev-parse HEAD; } >"$OUT/env.txt"
for run in $(seq 1 "$RUNS"); do
  for fs in "${FSLIST[@]}"; do
    echo "[fs-peers] run $run/$RUNS: $fs" >&2
    if [ "$fs" = gluster ]; then
      # The shared script mounts, measures and tears GlusterFS down (glusterd included).
      PEERS_RESULTS="$OUT" "$ROOT_DIR/../shared/bench/mount-peers.sh" -n 1 -s "$run" gluster
      continue
    fi
    mount_fs "$fs" || { echo "mount $fs failed" >&2; exit 1; }
    "$PEERS" "$MNT" >"$OUT/$fs.run$run.out" 2>"$OUT/$fs.run$run.log"
    umount_fs "$fs"
  done
done
if [[ " ${FSLIST[*]} " == *" atefs_cluster_rwo "* ]]; then
  python3 "$ROOT_DIR/bench/summarize.py" "$OUT" atefs_cluster_rwo disk,gluster,gocryptfs,atefs
elif [[ " ${FSLIST[*]} " == *" atefs_cluster "* ]]; then
  python3 "$ROOT_DIR/bench/summarize.py" "$OUT" atefs_cluster disk,gluster
else
  python3 "$ROOT_DIR/bench/summarize.py" "$OUT"
fi
