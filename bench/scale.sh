#!/usr/bin/env bash
# What a file costs in memory. Two shapes of FILES files: "empty" (all in one directory) and
# "small" (1 KiB each, 100 per directory). For each:
# - an embedded mount: the time to create them (fsync of the root at the end), the daemon's
#   resident set after, the heap its chain's view takes per record (view-memory), and the
#   resident set after a remount;
# - an `--exclusive` mount of a local three-replica cluster (dev-cluster, TLS): the same
#   creates, then each replica's resident set and records (`atefs_records`), and again after
#   the whole cluster restarted (the views are rebuilt from snapshot and log).
# Usage: bench/scale.sh FILES [BIN_DIR]    (root, /dev/fuse; BIN_DIR default target/release,
# holding atefs, chain-server and view-memory)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=$1
BIN=$(realpath "${2:-target/release}")
# shellcheck source=../scripts/cluster-lib.sh
. scripts/cluster-lib.sh
bench_setup scale

rss_mib() { awk '/VmRSS/{print int($2 / 1024)}' "/proc/$1/status"; }
hwm_mib() { awk '/VmHWM/{print int($2 / 1024)}' "/proc/$1/status"; }
daemon_of() { pgrep -f "atefs mount $1 " | head -1; }
replicas_mib() { # rss_mib or hwm_mib of each replica
  local r out=""
  for r in 1 2 3; do
    out="$out $("$1" "$(pgrep -f "chain-server run --id $r --data $WORK/cluster/node-$r" | head -1)")"
  done
  echo "${out# }"
}
records() { # sum of atefs_records on replica 1
  (
    exec 4<>"/dev/tcp/127.0.0.1/$((BASE_PORT + 12))"
    printf 'GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n' >&4
    awk '/^atefs_records\{/{n += $2} END {print n}' <&4
  )
}
secs() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$@"; }

create() { # SHAPE DIR
  python3 - "$1" "$2" "$FILES" <<'PY'
import os, sys
shape, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = os.urandom(1024)
for i in range(n):
    if shape == "empty":
        if i == 0:
            os.mkdir(f"{root}/d")
        os.close(os.open(f"{root}/d/f{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
    else:
        if i % 100 == 0:
            os.mkdir(f"{root}/d{i // 100}")
        with open(f"{root}/d{i // 100}/f{i}", "wb") as f:
            f.write(data)
    if i and i % 50000 == 0:
        print(f"  {i} files", file=sys.stderr, flush=True)
PY
  sync "$2"
}

unmount() { # DIR: unmounts and waits for the daemon to exit
  local pid
  pid=$(daemon_of "$1")
  umount "$1"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

echo "# bench/scale.sh $FILES files, $(date -Is), $("$BIN/atefs" --version)"
for shape in empty small; do
  rm -rf "$WORK/emb"
  mkdir -p "$MNT"
  "$BIN/atefs" mount "$MNT" --data "$WORK/emb" >>"$WORK/mount.log" 2>&1
  t0=$(date +%s.%N)
  create "$shape" "$MNT"
  t1=$(date +%s.%N)
  after=$(rss_mib "$(daemon_of "$MNT")")
  unmount "$MNT"
  view=$("$BIN/view-memory" "$WORK/emb/chain" | tail -1 | sed 's/^[^:]*: //')
  t0r=$(date +%s.%N)
  "$BIN/atefs" mount "$MNT" --data "$WORK/emb" >>"$WORK/mount.log" 2>&1
  t1r=$(date +%s.%N)
  remount=$(rss_mib "$(daemon_of "$MNT")")
  unmount "$MNT"
  echo "embedded $shape: created in $(secs "$t0" "$t1") s, daemon RSS $after MiB; view: $view; remount $(secs "$t0r" "$t1r") s, RSS $remount MiB"

  mount_dev_cluster "$BIN" "$WORK" "$BASE_PORT" "$MNT"
  t0=$(date +%s.%N)
  create "$shape" "$MNT"
  t1=$(date +%s.%N)
  mnt_rss=$(rss_mib "$(daemon_of "$MNT")")
  before=$(replicas_mib rss_mib)
  recs=$(records)
  unmount "$MNT"
  stop_dev_cluster
  start_dev_cluster "$BIN/chain-server" "$WORK/cluster" "$BASE_PORT" "$WORK/cluster.log"
  # The views are whole again once replica 1 holds as many records as before (its metrics
  # answer only when it is up; a minute of no progress is a failure).
  seen=0 still=0
  while [ "$seen" != "$recs" ]; do
    sleep 1
    now=$(records 2>/dev/null || echo 0)
    if [ "$now" = "$seen" ]; then still=$((still + 1)); else still=0 seen=$now; fi
    [ "$still" -lt 60 ] || { echo "replica 1 stuck at $seen of $recs records" >&2; exit 1; }
  done
  echo "cluster $shape: created in $(secs "$t0" "$t1") s, mount RSS $mnt_rss MiB; replicas RSS $before MiB holding $recs records; after a restart $(replicas_mib rss_mib) MiB (peak $(replicas_mib hwm_mib) MiB), $seen records"
  stop_dev_cluster
done
