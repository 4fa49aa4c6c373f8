# shellcheck shell=bash
# Helpers for scripts that run a local three-replica chain-server cluster (sourced).
# start_dev_cluster BIN DIR BASE_PORT LOG: starts `chain-server dev-cluster` in the
# background (sets CLUSTER_PID) and waits until every replica reports leaders;
# stop_dev_cluster: stops it (idempotent). API ports are BASE+10, BASE+20, BASE+30.
# free_base_port BASE: BASE, or the next multiple of 100 above it whose ports are free.
# bench_setup NAME: for a benchmark that mounts clusters one after the other: a scratch WORK
# (/tmp/atefs-NAME.XXXXXX), a free BASE_PORT (from $BASE_PORT, default 7900), MNT=WORK/mnt,
# and an EXIT trap that unmounts MNT, stops the cluster and removes WORK.

# GET /health on a metrics port: 200 once that replica's partitions have leaders.
healthy() {
  (
    exec 4<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET /health HTTP/1.1\r\nhost: x\r\n\r\n' >&4
    read -r status <&4
    [[ "$status" == *" 200 "* ]]
  ) 2>/dev/null
}

# Something answers on 127.0.0.1:PORT.
listening() { (exec 4<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether nothing answers on any port of a cluster at BASE.
ports_free() {
  local r p
  for r in 1 2 3; do
    for p in 0 1 2; do
      listening $(($1 + 10 * r + p)) && return 1
    done
  done
  return 0
}

# The first of BASE, BASE+100, ... (ten tries) whose ports are all free.
free_base_port() {
  local base=$1 _
  for _ in $(seq 10); do
    ports_free "$base" && { echo "$base"; return 0; }
    base=$((base + 100))
  done
  echo "no free ports from $1 to $base" >&2
  return 1
}

start_dev_cluster() {
  local bin=$1 dir=$2 base=$3 log=$4 n r
  # A cluster left by a killed run would answer the health checks below in this one's place.
  if ! ports_free "$base"; then
    echo "a port of $((base + 10))-$((base + 32)) is taken (a cluster left running?)" >&2
    return 1
  fi
  "$bin" dev-cluster --dir "$dir" --base-port "$base" >>"$log" 2>&1 &
  CLUSTER_PID=$!
  for _ in $(seq 100); do
    n=0
    for r in 1 2 3; do healthy $((base + 10 * r + 2)) && n=$((n + 1)); done
    [ "$n" -eq 3 ] && return 0
    sleep 0.1
  done
  echo "the cluster did not become ready; its log:" >&2
  tail -20 "$log" >&2
  return 1
}

stop_dev_cluster() {
  if [ -n "${CLUSTER_PID:-}" ]; then
    kill "$CLUSTER_PID" 2>/dev/null && wait "$CLUSTER_PID" 2>/dev/null
  fi
  CLUSTER_PID=""
}

# The API addresses, comma-separated.
cluster_servers() {
  echo "127.0.0.1:$(($1 + 10)),127.0.0.1:$(($1 + 20)),127.0.0.1:$(($1 + 30))"
}

# mount_dev_cluster BIN WORK BASE MNT: a fresh three-replica cluster of BIN's build in
# WORK/cluster (log WORK/cluster.log), a key file for it and an `--exclusive` mount at MNT
# with its cache in WORK/cache (log WORK/mount.log). Undo with umount MNT; stop_dev_cluster.
mount_dev_cluster() {
  local bin=$1 work=$2 base=$3 mnt=$4
  rm -rf "$work/cluster" "$work/cache"
  mkdir -p "$mnt"
  start_dev_cluster "$bin/chain-server" "$work/cluster" "$base" "$work/cluster.log" || return 1
  "$bin/atefs" keygen "$work/cluster/keys" >/dev/null
  "$bin/atefs" mount "$mnt" --data "$work/cache" --keys "$work/cluster/keys" \
    --server "$(cluster_servers "$base")" --ca "$work/cluster/certs/ca.pem" --exclusive \
    >>"$work/mount.log" 2>&1
}

# The volume the copy benchmarks (clone, rekey, backup) work on: one 512 MiB file written
# with fio and 2,000 files of 4 KiB, in the mount at $1; prints its data in MiB.
fill_volume() {
  local mnt=$1
  fio --name=fill --filename="$mnt/big" --rw=write --bs=1M --size=512M --end_fsync=1 >/dev/null
  mkdir "$mnt/small"
  head -c 4096 /dev/urandom >"$mnt/small/0"
  for i in $(seq 2000); do cp "$mnt/small/0" "$mnt/small/$i"; done
  rm "$mnt/small/0"
  du -sm --apparent-size "$mnt" | cut -f1
}

# Seconds since the epoch, to the nanosecond (for timing).
now() { date +%s.%N; }

# A result line: shown, kept in $WORK/runs (for the medians) and appended to $OUT.
say() { echo "$*" | tee -a "$WORK/runs" "$OUT"; }

# timed COMMAND...: the seconds it took (RUST_LOG warn unless set; its output goes to
# $WORK/bench.log).
timed() {
  local t0
  t0=$(now)
  RUST_LOG=${RUST_LOG:-warn} "$@" >>"$WORK/bench.log" 2>&1
  echo "$(now) - $t0" | bc
}

bench_setup() {
  WORK=$(mktemp -d "/tmp/atefs-$1.XXXXXX")
  BASE_PORT=$(free_base_port "${BASE_PORT:-7900}")
  MNT=$WORK/mnt
  trap bench_cleanup EXIT
}

bench_cleanup() {
  if grep -q " $MNT " /proc/mounts; then umount -l "$MNT"; fi
  stop_dev_cluster
  rm -rf "$WORK"
}
