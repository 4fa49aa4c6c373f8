#!/usr/bin/env bash
# End-to-end on kind: builds the image, installs the chart, provisions a ReadWriteMany volume,
# writes it from one node and reads it from another, replaces the node plugin's pods under the
# mounted volume, expands it while mounted, scales the chain servers up and down under it,
# clones it, gives it new keys, backs it up, deletes it and checks that its keys went with it. Needs docker, kind, kubectl and helm, and a registry for the sidecar and busybox
# images; none of these can run on the project's build machine, where this file is only
# checked statically (bash -n, and its YAML against the Kubernetes schemas: scripts/chart-check.py).
#   kind-tests/run.sh [CLUSTER_NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${1:-atefs-e2e}
NS=atefs-system
TAG=atefs:e2e

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind-tests: $tool is needed" >&2; exit 2; }
done

cleanup() { kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

kind create cluster --name "$CLUSTER" --config kind-tests/kind.yaml --wait 120s
images/build.sh "$TAG"
kind load docker-image --name "$CLUSTER" "$TAG"

helm install atefs charts/atefs --namespace "$NS" --create-namespace \
  --set image.repository=atefs --set image.tag=e2e --set image.pullPolicy=Never \
  --set chainServer.storage.size=1Gi --wait --timeout 5m
kubectl -n "$NS" rollout status statefulset/atefs-chain-server --timeout=5m
kubectl -n "$NS" rollout status daemonset/atefs-node --timeout=5m
kubectl -n "$NS" rollout status daemonset/atefs-node-agent --timeout=5m

kubectl apply -f kind-tests/workload.yaml
kubectl wait --for=jsonpath='{.status.phase}'=Bound pvc/shared --timeout=120s
kubectl wait --for=condition=Ready pod/writer pod/reader --timeout=300s
writer_node=$(kubectl get pod writer -o jsonpath='{.spec.nodeName}')
reader_node=$(kubectl get pod reader -o jsonpath='{.spec.nodeName}')
[ "$writer_node" != "$reader_node" ] || { echo "kind-tests: both pods on $writer_node" >&2; exit 1; }
got=$(kubectl exec reader -- cat /data/hello)
[ "$got" = "written-by-writer" ] || { echo "kind-tests: reader saw '$got'" >&2; exit 1; }
if kubectl exec reader -- sh -c 'echo x > /data/nope' 2>/dev/null; then
  echo "kind-tests: the read-only mount took a write" >&2; exit 1
fi
pv=$(kubectl get pvc shared -o jsonpath='{.spec.volumeName}')
kubectl -n "$NS" get secret "atefs-$pv" >/dev/null

# The node plugin's pods replaced (an upgrade): the mounts are the node agent's and stay.
kubectl -n "$NS" delete pod -l app.kubernetes.io/component=node --wait --timeout=120s
kubectl -n "$NS" rollout status daemonset/atefs-node --timeout=5m
got=$(kubectl exec reader -- cat /data/hello)
[ "$got" = "written-by-writer" ] || { echo "kind-tests: after the plugin's restart the reader saw '$got'" >&2; exit 1; }
kubectl exec writer -- sh -c 'echo after-restart > /data/later && sync'

# Expanded while both pods use it: the claim's capacity and the mounts' df follow.
kubectl patch pvc shared --type=merge -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}'
kubectl wait --for=jsonpath='{.status.capacity.storage}'=2Gi pvc/shared --timeout=120s
for _ in $(seq 1 30); do
  size=$(kubectl exec reader -- df -k /data | awk 'NR==2 {print $2}')
  [ "$size" = "2097152" ] && break
  sleep 1
done
[ "$size" = "2097152" ] || { echo "kind-tests: df in the reader says ${size}K, not 2Gi" >&2; exit 1; }

# The chain servers scaled up under the mounted volume: the new pod joins every partition,
# then the old ones restart with the longer list; then down again as docs/operations.md says.
voters() {
  kubectl get --raw "/api/v1/namespaces/$NS/pods/atefs-chain-server-0:9100/proxy/metrics" |
    awk '/^atefs_raft_voters/ {print $2}' | sort -u | tr '\n' ' '
}
helm upgrade atefs charts/atefs --namespace "$NS" --reuse-values \
  --set chainServer.replicas=4 --wait --timeout 10m
kubectl -n "$NS" rollout status statefulset/atefs-chain-server --timeout=10m
[ "$(voters)" = "4 " ] || { echo "kind-tests: after scaling up, voters per partition: $(voters)" >&2; exit 1; }
kubectl exec writer -- sh -c 'echo after-scale-up > /data/scaled && sync'
kubectl -n "$NS" scale statefulset atefs-chain-server --replicas=3
kubectl -n "$NS" wait --for=delete pod/atefs-chain-server-3 --timeout=120s
stay=$(for i in 0 1 2; do printf '%s,' "atefs-chain-server-$i.atefs-chain-server.$NS.svc:7111"; done)
kubectl -n "$NS" exec atefs-chain-server-0 -- chain-server forget 4 --tls-dir /tls --server "${stay%,}"
helm upgrade atefs charts/atefs --namespace "$NS" --reuse-values \
  --set chainServer.replicas=3 --wait --timeout 10m
kubectl -n "$NS" rollout status statefulset/atefs-chain-server --timeout=10m
kubectl -n "$NS" delete pvc data-atefs-chain-server-3 --wait --timeout=120s
[ "$(voters)" = "3 " ] || { echo "kind-tests: after scaling down, voters per partition: $(voters)" >&2; exit 1; }
got=$(kubectl exec reader -- cat /data/scaled)
[ "$got" = "after-scale-up" ] || { echo "kind-tests: after scaling the reader saw '$got'" >&2; exit 1; }

# A clone of the claim holds what it held, and is a volume of its own.
kubectl apply -f kind-tests/clone.yaml
kubectl wait --for=condition=Ready pod/clone-reader --timeout=300s
got=$(kubectl exec clone-reader -- cat /data/later)
[ "$got" = "after-restart" ] || { echo "kind-tests: the clone holds '$got'" >&2; exit 1; }
if kubectl exec reader -- cat /data/mine 2>/dev/null; then
  echo "kind-tests: a write to the clone reached its source" >&2; exit 1
fi
kubectl delete -f kind-tests/clone.yaml --wait --timeout=180s

# New keys for the volume (its Secret was exposed, say): once no node has it mounted, the
# controller gives it new keys and its Secret the new envelope (docs/operations.md); pods
# started afterwards read what it held.
mounts() { # atefs mounts on all nodes together
  for p in $(kubectl -n "$NS" get pod -l app.kubernetes.io/component=node -o name); do
    kubectl get --raw "/api/v1/namespaces/$NS/pods/${p#pod/}:9810/proxy/metrics" |
      awk '/^atefs_csi_mounts / {print $2}'
  done | awk '{s += $1} END {print s + 0}'
}
old_keys=$(kubectl -n "$NS" get secret "atefs-$pv" -o jsonpath='{.data.keyEnvelope}')
kubectl delete pod writer reader --wait --timeout=180s
for _ in $(seq 1 60); do
  [ "$(mounts)" = 0 ] && break
  sleep 2
done
[ "$(mounts)" = 0 ] || { echo "kind-tests: the volume stayed mounted after its pods went" >&2; exit 1; }
kubectl -n "$NS" exec deploy/atefs-controller -c atefs-csi -- atefs-csi --rekey "$pv"
new_keys=$(kubectl -n "$NS" get secret "atefs-$pv" -o jsonpath='{.data.keyEnvelope}')
[ "$new_keys" != "$old_keys" ] || { echo "kind-tests: the volume's Secret kept its keys" >&2; exit 1; }
kubectl apply -f kind-tests/workload.yaml
kubectl wait --for=condition=Ready pod/writer pod/reader --timeout=300s
got=$(kubectl exec reader -- cat /data/later)
[ "$got" = "after-restart" ] || { echo "kind-tests: after the rekey the reader saw '$got'" >&2; exit 1; }

# A backup streamed out of the controller's container (docs/operations.md, "Backups off the
# cluster"): a signed file that holds none of the volume's content; restoring it over the
# volume the cluster still has is refused.
backup=$(mktemp)
kubectl -n "$NS" exec deploy/atefs-controller -c atefs-csi -- atefs-csi --backup "$pv" >"$backup"
[ "$(head -c 8 "$backup")" = ATEBKUP1 ] || { echo "kind-tests: the backup is not one" >&2; exit 1; }
if grep -q after-restart "$backup"; then echo "kind-tests: the backup holds plaintext" >&2; exit 1; fi
if kubectl -n "$NS" exec -i deploy/atefs-controller -c atefs-csi -- atefs-csi --restore "$pv" <"$backup"; then
  echo "kind-tests: a restore overwrote a live volume" >&2; exit 1
fi
rm -f "$backup"

kubectl delete -f kind-tests/workload.yaml --wait --timeout=180s
for _ in $(seq 1 60); do
  kubectl -n "$NS" get secret "atefs-$pv" >/dev/null 2>&1 || break
  sleep 2
done
if kubectl -n "$NS" get secret "atefs-$pv" >/dev/null 2>&1; then
  echo "kind-tests: the deleted volume's keys remain" >&2; exit 1
fi
echo "kind-tests: ok (written on $writer_node, read on $reader_node, expanded to 2Gi, chain servers scaled 3-4-3, cloned, rekeyed, backed up, deleted with its keys)"
