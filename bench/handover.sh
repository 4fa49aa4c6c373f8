#!/usr/bin/env bash
# What replacing a mount's daemon costs the programs using it (`atefs take-over`, how the node
# agent is upgraded): a probe writes 4 KiB and fdatasyncs in a loop (bench/handover-probe.py)
# while, 2 s in, a new daemon takes the mount over. Per run and volume kind (an embedded
# volume; a shared volume on a fresh three-replica cluster of BIN_DIR's build): how long the
# take-over took (until the new daemon said "mounted"), the probe's median operation, its
# longest one overlapping the take-over (the pause it saw), its longest one overall (for
# scale: the log's compaction also pauses a writer), and its failed operations (must be 0).
# Medians last.
# There is no peer to compare with: a GlusterFS or gocryptfs client cannot be replaced under
# its mount; the alternative is an unmount, which ends every open file.
# Usage: bench/handover.sh RUNS /ABSOLUTE/BIN_DIR   (root; Linux 6.9+)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
BIN=$2
WORK=$(mktemp -d /tmp/atefs-handover.XXXXXX)
BASE_PORT=$(. scripts/cluster-lib.sh && free_base_port "${BASE_PORT:-7950}")
MNT=$WORK/mnt
SOCK=$WORK/handover.sock
. scripts/cluster-lib.sh
cleanup() {
  grep -q " $MNT " /proc/mounts && umount -l "$MNT"
  stop_dev_cluster
  rm -rf "$WORK"
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mkdir -p "$MNT"
declare -A TAKE P50 PAUSE MAX
for run in $(seq "$RUNS"); do
  for kind in embedded shared; do
    rm -rf "$WORK/data" "$WORK/cluster" "$WORK/cache"
    if [ "$kind" = embedded ]; then
      "$BIN/atefs" mount "$MNT" --data "$WORK/data" --handover "$SOCK" >>"$WORK/mount.log" 2>&1
    else
      start_dev_cluster "$BIN/chain-server" "$WORK/cluster" "$BASE_PORT" "$WORK/cluster.log"
      "$BIN/atefs" keygen "$WORK/cluster/keys" >/dev/null
      "$BIN/atefs" mount "$MNT" --data "$WORK/cache" --keys "$WORK/cluster/keys" \
        --server "$(cluster_servers "$BASE_PORT")" --ca "$WORK/cluster/certs/ca.pem" \
        --handover "$SOCK" >>"$WORK/mount.log" 2>&1
    fi
    rm -f "$WORK/window"
    python3 bench/handover-probe.py "$MNT" 6 "$WORK/window" >"$WORK/probe.json" 2>>"$WORK/probe.err" &
    probe=$!
    sleep 2
    t0=$(now)
    read -r line < <("$BIN/atefs" take-over "$SOCK" 2>>"$WORK/mount.log")
    t1=$(now)
    echo "$t0 $t1" >"$WORK/window"
    t=$(echo "$t1 - $t0" | bc)
    [ "$line" = mounted ] || { echo "take-over failed: $line"; tail "$WORK/mount.log"; exit 1; }
    wait "$probe"
    read -r ops fails p50 pause max at <<<"$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["ops"], j["failures"], j["p50_ms"], j["window_max_ms"], j["max_ms"], j["max_at_s"])' "$WORK/probe.json")"
    [ "$fails" = 0 ] || { echo "the probe saw $fails failures:"; cat "$WORK/probe.err"; exit 1; }
    printf 'run %d %-8s take-over %.3f s   probe: %5d ops, p50 %6.2f ms, longest during the take-over %6.1f ms, longest %6.1f ms (at %.2f s), failures %d\n' \
      "$run" "$kind" "$t" "$ops" "$p50" "$pause" "$max" "$at" "$fails"
    TAKE[$kind]+="$t "; P50[$kind]+="$p50 "; PAUSE[$kind]+="$pause "; MAX[$kind]+="$max "
    "$BIN/atefs" umount "$MNT" >/dev/null
    # The daemon exits after the unmount; the next run reuses the mount point.
    while grep -q " $MNT " /proc/mounts; do sleep 0.1; done
    [ "$kind" = shared ] && stop_dev_cluster
  done
done
for kind in embedded shared; do
  printf 'median %-8s take-over %.3f s, probe p50 %.2f ms, longest during the take-over %.1f ms, longest %.1f ms\n' "$kind" \
    "$(tr ' ' '\n' <<<"${TAKE[$kind]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${P50[$kind]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${PAUSE[$kind]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${MAX[$kind]}" | grep . | median)"
done
