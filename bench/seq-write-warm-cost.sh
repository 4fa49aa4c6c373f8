#!/usr/bin/env bash
# bench/seq-write-cost.sh after a first 512 MiB file written the same way (fio, 1 MiB blocks,
# end_fsync=1) and kept: the file system's servers and client have run a write before the
# one measured, as a long-running one has. Same output and arguments as seq-write-cost.sh,
# usable as ../shared/bench/mount-peers.sh's PEERS_SCRIPT too.
# Usage: bench/seq-write-warm-cost.sh DIR [PATTERN...]
set -euo pipefail
DIR=$1
FIRST="$DIR/warm-first.$$"
trap 'rm -f "$FIRST"' EXIT
fio --name=first --filename="$FIRST" --rw=write --bs=1M --size=512M --end_fsync=1 \
  --output-format=json >/dev/null
"$(dirname "$0")/seq-write-cost.sh" "$@"
