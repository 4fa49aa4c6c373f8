#!/usr/bin/env bash
# Builds the atefs image (atefs, atefs-csi, atefs-node-agent, chain-server) with no registry pull: FROM scratch
# plus the binaries and the C libraries they link, taken from this Debian machine.
#   images/build.sh [TAG] [PROFILE]        default: atefs:dev, release
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-atefs:dev}
PROFILE=${2:-release}
BINS="atefs atefs-csi atefs-node-agent chain-server"

cargo build --profile "$PROFILE" --locked -p atefs -p chain-server -p csi-driver -p node-agent
dir=target/$PROFILE
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/etc"
for b in $BINS; do
  cp "$dir/$b" "$ctx/rootfs/usr/bin/$b"
  # The line tables are three quarters of a binary; symbols stay, so backtraces keep names.
  strip --strip-debug "$ctx/rootfs/usr/bin/$b"
done
# The shared libraries (and the loader) the binaries need, at the paths they were linked with.
for lib in $(for b in $BINS; do ldd "$dir/$b"; done | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
chmod 1777 "$ctx/rootfs/tmp"
printf 'root:x:0:0:root:/:/usr/bin/atefs\nnonroot:x:65532:65532:nonroot:/:/usr/bin/atefs\n' > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$ctx/rootfs/etc/group"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
# The chain server and controller run as this user; the node plugin runs privileged (FUSE).
USER 65532:65532
ENTRYPOINT ["/usr/bin/atefs-csi"]
DOCKERFILE
docker build -q -t "$TAG" "$ctx"
docker image inspect "$TAG" --format "built $TAG: {{.Size}} bytes"
