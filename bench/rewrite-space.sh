#!/usr/bin/env bash
# A file rewritten in place, and the disk it then takes: fio writes a 256 MiB file in 1 MiB
# blocks (end_fsync) ROUNDS times over (default 8: 2 GiB written, 256 MiB held) on a mounted
# DIR; then, after SETTLE seconds (default 5: the chain servers bound their logs once a
# second), the MiB under each of SPACE_SERVERS (a glob per server's data, space-separated) and
# under SPACE_CACHE (the mount's cache, if any). Prints one line of name=value pairs; usable
# as ../shared/bench/mount-peers.sh's PEERS_SCRIPT.
# Usage: SPACE_SERVERS='GLOB...' [SPACE_CACHE=DIR] bench/rewrite-space.sh DIR
set -euo pipefail
DIR=$1
ROUNDS=${ROUNDS:-8}
SETTLE=${SETTLE:-5}
start=$(date +%s.%N)
for _ in $(seq "$ROUNDS"); do
  fio --name=rewrite --filename="$DIR/rewritten" --rw=write --bs=1M --size=256M \
    --end_fsync=1 --output-format=terse >/dev/null
done
end=$(date +%s.%N)
sleep "$SETTLE" # the servers' byte bound is checked once a second: let it act
mib() { du -sm "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
servers=()
for g in ${SPACE_SERVERS:?}; do servers+=("$(mib $g)"); done
max=$(printf '%s\n' "${servers[@]}" | sort -n | tail -1)
echo "MiB/s=$(echo "$ROUNDS * 256 / ($end - $start)" | bc -l | xargs printf '%.1f')" \
  "written_MiB=$((ROUNDS * 256)) held_MiB=256 server_max_MiB=$max" \
  "cache_MiB=$(if [ -n "${SPACE_CACHE:-}" ]; then mib "$SPACE_CACHE"; else echo 0; fi)"
