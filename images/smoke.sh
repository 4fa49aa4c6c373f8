#!/usr/bin/env bash
# Runs the image as the chart does, with Docker (no --privileged): three chain servers named
# like a StatefulSet's pods on one network (peers by DNS name, --id-from-hostname,
# --bootstrap-first, TLS, user 65532, read-only root file system, no capabilities); two atefs
# mounts in containers given only /dev/fuse and CAP_SYS_ADMIN, their mount points propagated to
# the host: what one writes the other reads; the node agent and the CSI plugin (node, through
# the agent, and controller) serving.
#   images/smoke.sh [TAG]        (images/build.sh first; needs root and a running dockerd)
set -euo pipefail
TAG=${1:-atefs:dev}
id=$$
net=atefs-smoke-$id
work=$(mktemp -d /tmp/atefs-smoke.XXXXXX)
containers=()

cleanup() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  for m in "$work"/mnt-*; do
    [ -d "$m" ] || continue
    umount -l "$m" 2>/dev/null || true
    umount -l "$m" 2>/dev/null || true
  done
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

run() { # name, then docker run arguments
  local name=$1; shift
  containers+=("$name")
  docker run -d --name "$name" "$@" >/dev/null
}

ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$1"; }

wait_http() { # url what
  for _ in $(seq 1 300); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "smoke: $2 never answered $1" >&2
  for c in "${containers[@]}"; do echo "--- $c"; docker logs --tail 20 "$c" 2>&1; done >&2
  return 1
}

docker network create "$net" >/dev/null
docker run --rm --user 0 -v "$work:/out" --entrypoint /usr/bin/chain-server "$TAG" certs --out /out/certs >/dev/null
docker run --rm --user 0 -v "$work:/out" --entrypoint /usr/bin/atefs "$TAG" keygen /out/vol.keys >/dev/null
chown -R 65532:65532 "$work/certs"

peers=()
for i in 0 1 2; do
  peers+=(--peer "$((i + 1))=atefs-chain-server-$i:7111,atefs-chain-server-$i:7110")
done
for i in 0 1 2; do
  mkdir -p "$work/data-$i" && chown 65532:65532 "$work/data-$i"
  run "atefs-chain-server-$i-$id" --hostname "atefs-chain-server-$i" --network "$net" \
    --network-alias "atefs-chain-server-$i" --read-only --user 65532:65532 --cap-drop ALL \
    -v "$work/certs:/tls:ro" -v "$work/data-$i:/data" --entrypoint /usr/bin/chain-server "$TAG" \
    run --id-from-hostname --bootstrap-first --data /data/chain-server --tls-dir /tls \
    --partitions 2 --metrics 0.0.0.0:9100 "${peers[@]}"
done
for i in 0 1 2; do
  wait_http "http://$(ip_of "atefs-chain-server-$i-$id"):9100/health" "chain server $i"
done
echo "smoke: three chain-server containers formed a cluster (DNS peers, TLS, non-root, read-only)"

servers=atefs-chain-server-0:7110,atefs-chain-server-1:7110,atefs-chain-server-2:7110
for m in a b; do
  mkdir -p "$work/mnt-$m" "$work/cache-$m"
  # A shared mount point, so that the FUSE mount made in the container shows on the host.
  mount --bind "$work/mnt-$m" "$work/mnt-$m"
  mount --make-rshared "$work/mnt-$m"
  containers+=("atefs-mount-$m-$id")
  docker run -d --name "atefs-mount-$m-$id" --network "$net" --user 0 --cap-drop ALL \
    --cap-add SYS_ADMIN --device /dev/fuse --security-opt apparmor=unconfined \
    -v "$work/vol.keys:/keys:ro" -v "$work/certs/ca.pem:/ca.pem:ro" -v "$work/cache-$m:/cache" \
    -v "$work/mnt-$m:/mnt:rshared" --entrypoint /usr/bin/atefs "$TAG" \
    mount /mnt --foreground --data /cache --keys /keys --server "$servers" --ca /ca.pem >/dev/null
done
for m in a b; do
  for _ in $(seq 1 300); do
    grep -q " $work/mnt-$m .* - fuse atefs" /proc/self/mountinfo && break
    sleep 0.2
  done
  grep -q " $work/mnt-$m .* - fuse atefs" /proc/self/mountinfo \
    || { echo "smoke: mount $m did not appear"; docker logs "atefs-mount-$m-$id"; exit 1; }
done
echo "written in container a" > "$work/mnt-a/hello"
got=$(cat "$work/mnt-b/hello")
[ "$got" = "written in container a" ] || { echo "smoke: b read '$got'"; exit 1; }
echo "smoke: two atefs mounts in containers (CAP_SYS_ADMIN + /dev/fuse only) share a file through the cluster"
for m in a b; do
  docker stop -t 30 "atefs-mount-$m-$id" >/dev/null
done
for m in a b; do
  if grep -q " $work/mnt-$m .* - fuse atefs" /proc/self/mountinfo; then
    echo "smoke: mount $m still there after its container stopped"; exit 1
  fi
done
echo "smoke: stopping a mount container unmounts it"

mkdir -p "$work/csi"
run "atefs-node-agent-$id" --network "$net" --user 0 --cap-drop ALL --cap-add SYS_ADMIN --device /dev/fuse \
  -v "$work/csi:/csi" --entrypoint /usr/bin/atefs-node-agent "$TAG" \
  --endpoint unix:///csi/agent.sock --metrics 0.0.0.0:9811
wait_http "http://$(ip_of "atefs-node-agent-$id"):9811/health" "atefs-node-agent"
[ -S "$work/csi/agent.sock" ] || { echo "smoke: no node agent socket"; exit 1; }
echo "smoke: atefs-node-agent serves on $work/csi/agent.sock"
run "atefs-csi-$id" --network "$net" --user 0 --cap-drop ALL --cap-add SYS_ADMIN --device /dev/fuse \
  -v "$work/csi:/csi" -v "$work/certs/ca.pem:/ca.pem:ro" "$TAG" \
  --controller --keys-dir /csi/keys --node-id smoke-node --endpoint unix:///csi/csi.sock \
  --servers "$servers" --ca /ca.pem --metrics 0.0.0.0:9810 --node-agent unix:///csi/agent.sock
wait_http "http://$(ip_of "atefs-csi-$id"):9810/health" "atefs-csi"
[ -S "$work/csi/csi.sock" ] || { echo "smoke: no CSI socket"; exit 1; }
echo "smoke: atefs-csi serves Node (through the node agent) and Controller on $work/csi/csi.sock"
echo "smoke: ok"
