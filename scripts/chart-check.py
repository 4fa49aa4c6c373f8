#!/usr/bin/env python3
"""Lints and renders charts/atefs with the real Helm engine (helm-python-sdk), validates every
object against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail), checks
what the chart must contain, and compares manifests/atefs.yaml with a fresh render (drift fails;
`--write` regenerates it). Needs: pip install helm-python-sdk kubernetes-validate."""

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "atefs"
MANIFEST = ROOT / "manifests" / "atefs.yaml"
NAMESPACE = "atefs-system"
# Oldest and newest Kubernetes the chart is checked against.
KUBE_VERSIONS = ["1.28.0", "1.33.0"]
HEADER = "# Rendered from charts/atefs by scripts/chart-check.py --write; do not edit.\n"


def fail(msg):
    print(f"chart-check: {msg}", file=sys.stderr)
    sys.exit(1)


def render(values):
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="atefs", namespace=NAMESPACE, is_install=True)
    docs = []
    for path in sorted(out):
        if not path.endswith((".yaml", ".yml")):
            continue
        for d in yaml.safe_load_all(out[path]):
            if d:
                docs.append((path, d))
    return docs


# Kinds of CRDs the chart uses, which kubernetes-validate has no schema for: checked by hand.
CRD_KINDS = {"VolumeSnapshotClass": ("snapshot.storage.k8s.io/v1",
                                     {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"})}


def validate(docs, label):
    for path, d in docs:
        if d["kind"] in CRD_KINDS:
            api, fields = CRD_KINDS[d["kind"]]
            if d["apiVersion"] != api or not set(d) <= fields or d.get("deletionPolicy") not in ("Delete", "Retain"):
                fail(f"{label}: {path}: {d['kind']} malformed: {d}")
            continue
        for v in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{label}: {path}: {d['kind']}/{d['metadata'].get('name')} invalid for {v}: {e.message} at {list(e.path)}")


def by_kind(docs):
    return {(d["kind"], d["metadata"]["name"]): d for _, d in docs}


def kinds(docs):
    return {(d["kind"], d["metadata"]["name"]) for _, d in docs}


def tls_check(tls, chain_server):
    """The chart's generated TLS material works: three chain servers using it form a cluster
    (mutual TLS between replicas) and a client checking the server against the CA, by the name
    every client asks for, completes a handshake with the API."""
    with tempfile.TemporaryDirectory() as d:
        certs = Path(d) / "certs"
        certs.mkdir()
        for k, v in tls.items():
            (certs / k).write_bytes(base64.b64decode(v))
            os.chmod(certs / k, 0o600)
        base = 10500 + os.getpid() % 40 * 40
        proc = subprocess.Popen([chain_server, "dev-cluster", "--dir", d, "--base-port", str(base),
                                 "--partitions", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            for i in (1, 2, 3):
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{base + 10 * i + 2}/health", timeout=2) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        pass
                    if time.time() > deadline:
                        fail(f"chain servers with the chart's certificates never became ready (replica {i})")
                    time.sleep(0.1)
            ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            ctx.set_alpn_protocols(["h2"])
            with socket.create_connection(("127.0.0.1", base + 10)) as sock:
                with ctx.wrap_socket(sock, server_hostname="atefs-chain-server") as tls_sock:
                    if tls_sock.version() is None:
                        fail("no TLS handshake with the API")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print("chart-check: chain servers run with the chart's generated TLS material (mutual TLS between replicas, CA-checked API)")


def main():
    report = helm.lint(str(CHART), strict=True, namespace=NAMESPACE)
    errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if errors or report.get("errors"):
        fail(f"helm lint: {errors or report['errors']}")

    default = render({})
    validate(default, "default values")
    have = kinds(default)
    for want in [("CSIDriver", "csi.atefs.io"), ("StorageClass", "atefs"),
                 ("StatefulSet", "atefs-chain-server"), ("Service", "atefs-chain-server"),
                 ("PodDisruptionBudget", "atefs-chain-server"), ("Deployment", "atefs-controller"),
                 ("DaemonSet", "atefs-node"), ("DaemonSet", "atefs-node-agent"),
                 ("Secret", "atefs-tls"),
                 ("ClusterRole", "atefs-controller"), ("Role", "atefs-controller")]:
        if want not in have:
            fail(f"default render lacks {want}; has {sorted(have)}")
    by = by_kind(default)
    sts = by[("StatefulSet", "atefs-chain-server")]["spec"]
    args = sts["template"]["spec"]["containers"][0]["args"]
    peers = [a for a in args if a.startswith("--peer=")]
    if len(peers) != sts["replicas"]:
        fail(f"{len(peers)} --peer arguments for {sts['replicas']} replicas")
    # Large numbers leave Helm as floats ("2.68435456e+08") unless made integers.
    for want in ("--snapshot-log-bytes=268435456", "--disk-reserve-bytes=1073741824"):
        if want not in args:
            fail(f"the chain servers' byte sizes must be whole numbers ({want}): {args}")
    sc = by[("StorageClass", "atefs")]
    if sc["parameters"]["csi.storage.k8s.io/node-stage-secret-name"] != "atefs-${pv.name}":
        fail("the StorageClass must hand each volume's Secret to the node")
    if sc.get("allowVolumeExpansion") is not True:
        fail("the StorageClass must allow volume expansion (ControllerExpandVolume)")
    controller = by[("Deployment", "atefs-controller")]["spec"]["template"]["spec"]
    if "csi-resizer" not in [c["name"] for c in controller["containers"]]:
        fail("volume expansion needs external-resizer beside the controller")
    cluster_rules = by[("ClusterRole", "atefs-controller")]["rules"]
    if not any("persistentvolumeclaims/status" in r["resources"] and "patch" in r["verbs"]
               for r in cluster_rules):
        fail("external-resizer must be allowed to patch a claim's status")
    fixed = by_kind(render({"storageClass": {"allowVolumeExpansion": False}}))
    if (fixed[("StorageClass", "atefs")].get("allowVolumeExpansion") is not False
            or "csi-resizer" in [c["name"] for c in fixed[("Deployment", "atefs-controller")]
                                 ["spec"]["template"]["spec"]["containers"]]):
        fail("allowVolumeExpansion=false must leave the resizer out")
    if "mountOptions" in sc:
        fail(f"no mount options unless asked for: {sc['mountOptions']}")
    opts = render({"storageClass": {"mountOptions": ["timeout=120", "noatime"]}})
    validate(opts, "mount options")
    if by_kind(opts)[("StorageClass", "atefs")].get("mountOptions") != ["timeout=120", "noatime"]:
        fail("storageClass.mountOptions must reach the StorageClass")
    if "csi-snapshotter" in [c["name"] for c in controller["containers"]] or any(
            d["kind"] == "VolumeSnapshotClass" for _, d in default):
        fail("snapshots need CRDs the cluster may lack: off unless snapshots.enabled")
    csi = controller["containers"][0]
    env = {e["name"]: e.get("value") for e in csi.get("env", [])}
    work = env.get("ATEFS_WORK_DIR")
    if not work or not any(m["mountPath"] == work for m in csi["volumeMounts"]):
        fail("copies (clones, snapshots, rekeys) need a writable work dir: the root file system is read-only")
    # `kubectl exec ... atefs-csi --rekey NAME` gets its settings from the environment only.
    for var in ("SECRETS_NAMESPACE", "ATEFS_SERVERS", "ATEFS_CA"):
        if not env.get(var):
            fail(f"the controller's container must set {var} in its environment (for --rekey)")
    if any(a.split("=", 1)[0] in ("--servers", "--ca", "--secrets-namespace", "--work-dir")
           for a in csi["args"]):
        fail("the controller's settings belong in its environment, where --rekey finds them too")
    snaps = render({"snapshots": {"enabled": True}})
    validate(snaps, "snapshots enabled")
    sby = by_kind(snaps)
    vsc = sby.get(("VolumeSnapshotClass", "atefs"))
    if not vsc or vsc["driver"] != "csi.atefs.io":
        fail("snapshots.enabled must make a VolumeSnapshotClass of the driver")
    if "csi-snapshotter" not in [c["name"] for c in sby[("Deployment", "atefs-controller")]
                                 ["spec"]["template"]["spec"]["containers"]]:
        fail("snapshots.enabled must run csi-snapshotter beside the controller")
    if not any("volumesnapshotcontents/status" in r["resources"]
               for r in sby[("ClusterRole", "atefs-controller")]["rules"]):
        fail("csi-snapshotter must be allowed to update VolumeSnapshotContent status")
    role = by[("Role", "atefs-controller")]
    secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
    if not secret_rules or "update" in secret_rules[0]["verbs"] or "watch" in secret_rules[0]["verbs"]:
        fail("the controller's Secret access must stay get/list/create/delete")
    tls = by[("Secret", "atefs-tls")]["data"]
    if set(tls) != {"ca.pem", "server.pem", "server.key"}:
        fail(f"TLS Secret keys: {sorted(tls)}")
    for kind in ("Deployment", "DaemonSet"):
        name = "atefs-controller" if kind == "Deployment" else "atefs-node"
        vols = by[(kind, name)]["spec"]["template"]["spec"]["volumes"]
        tlsvol = [v for v in vols if v["name"] == "tls"][0]
        if tlsvol["secret"].get("items") != [{"key": "ca.pem", "path": "ca.pem"}]:
            fail(f"{kind} {name} must mount only the CA, not the server key")

    agent = by[("DaemonSet", "atefs-node-agent")]["spec"]
    rolling = agent["updateStrategy"].get("rollingUpdate", {})
    if (agent["updateStrategy"]["type"] != "RollingUpdate" or rolling.get("maxUnavailable") != 0
            or not rolling.get("maxSurge")):
        fail("a node agent must start beside the one it replaces (maxSurge, maxUnavailable 0)")
    agent_args = agent["template"]["spec"]["containers"][0]["args"]
    agent_probes = agent["template"]["spec"]["containers"][0]
    if not all(agent_probes.get(p) for p in ("startupProbe", "readinessProbe")):
        fail("the old agent may only go once the new one has taken its mounts over (ready)")
    state_dirs = [m["mountPath"] for m in agent["template"]["spec"]["containers"][0]["volumeMounts"]
                  if m["name"] == "state-dir"]
    registry = [a.split("=", 1)[1] for a in agent_args if a.startswith("--registry=")]
    if len(registry) != 1 or not registry[0].startswith(state_dirs[0] + "/"):
        fail(f"the agent's registry must be on the node's state directory: {agent_args}")
    ondelete = by_kind(render({"nodeAgent": {"updateStrategy": "OnDelete"}}))
    if ondelete[("DaemonSet", "atefs-node-agent")]["spec"]["updateStrategy"] != {"type": "OnDelete"}:
        fail("nodeAgent.updateStrategy OnDelete not rendered")
    plugin_args = by[("DaemonSet", "atefs-node")]["spec"]["template"]["spec"]["containers"][0]["args"]
    agent_socket = [a.split("=", 1)[1] for a in agent_args if a.startswith("--endpoint=")]
    if [a.split("=", 1)[1] for a in plugin_args if a.startswith("--node-agent=")] != agent_socket:
        fail(f"the plugin must call the agent's socket: {plugin_args} vs {agent_args}")
    for ds in ("atefs-node", "atefs-node-agent"):
        mounts = by[("DaemonSet", ds)]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        if not any(m.get("mountPropagation") == "Bidirectional" for m in mounts):
            fail(f"{ds}'s mounts must propagate to the host")
    solo = by_kind(render({"nodeAgent": {"enabled": False}}))
    if ("DaemonSet", "atefs-node-agent") in solo or any(
            a.startswith("--node-agent") for a in solo[("DaemonSet", "atefs-node")]["spec"]["template"]["spec"]["containers"][0]["args"]):
        fail("nodeAgent.enabled=false must run the daemons in the plugin")

    # Scheduled backups: off by default; on, a CronJob of the controller's account and
    # settings writes to the claim it is given, and without a claim the chart refuses.
    if any(d["kind"] == "CronJob" for _, d in default):
        fail("backups need a claim to write to: off unless backups.enabled")
    backups = render({"backups": {"enabled": True, "claimName": "atefs-backups", "keep": 3}})
    validate(backups, "backups enabled")
    cron = by_kind(backups).get(("CronJob", "atefs-backups"))
    if not cron:
        fail("backups.enabled must make the CronJob atefs-backups")
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    box = job["containers"][0]
    if box["args"] != ["--backup-all=/backups", "--keep=3"]:
        fail(f"the backup job's arguments: {box['args']}")
    benv = {e["name"]: e.get("value") for e in box.get("env", [])}
    for var in ("SECRETS_NAMESPACE", "ATEFS_SERVERS", "ATEFS_CA", "ATEFS_WORK_DIR"):
        if benv.get(var) != env.get(var):
            fail(f"the backup job must run with the controller's {var}: {benv.get(var)} vs {env.get(var)}")
    mounts = {m["mountPath"]: m["name"] for m in box["volumeMounts"]}
    vols = {v["name"]: v for v in job["volumes"]}
    if vols[mounts["/backups"]].get("persistentVolumeClaim") != {"claimName": "atefs-backups"}:
        fail("the backups must go to the claim given")
    if benv["ATEFS_WORK_DIR"] not in mounts:
        fail("the backup job reads each volume into a cache: its work dir must be writable")
    if vols["tls"]["secret"].get("items") != [{"key": "ca.pem", "path": "ca.pem"}]:
        fail("the backup job must mount only the CA, not the server key")
    if job["serviceAccountName"] != "atefs-controller":
        fail("the backup job reads the volumes' Secrets with the controller's account")
    try:
        render({"backups": {"enabled": True}})
    except Exception as e:  # the Helm engine's error type is its own
        if "backups.claimName" not in str(e):
            fail(f"backups without a claim: {e}")
    else:
        fail("backups.enabled without backups.claimName must not render")

    five = render({"chainServer": {"replicas": 5}})
    validate(five, "5 replicas")
    if "--chain-server" in sys.argv:
        tls_check(tls, sys.argv[sys.argv.index("--chain-server") + 1])

    # The kind end-to-end test cannot run here: its workload and scripts are checked statically.
    workload = [(f"kind-tests/{f}", d) for f in ("workload.yaml", "clone.yaml") for d in
                yaml.safe_load_all((ROOT / "kind-tests" / f).read_text()) if d]
    validate(workload, "kind-tests")
    for script in ("kind-tests/run.sh", "images/build.sh", "images/smoke.sh"):
        if subprocess.run(["bash", "-n", str(ROOT / script)]).returncode != 0:
            fail(f"{script} does not parse")

    pinned = yaml.safe_load((ROOT / "manifests" / "values.yaml").read_text())
    docs = render(pinned)
    validate(docs, "manifests values")
    if any(d["kind"] == "Secret" for _, d in docs):
        fail("manifests must not carry generated secrets")
    text = HEADER + "".join("---\n" + yaml.safe_dump(d, sort_keys=True) for _, d in docs)
    if "--write" in sys.argv:
        MANIFEST.write_text(text)
        print(f"wrote {MANIFEST.relative_to(ROOT)} ({len(docs)} objects)")
    elif not MANIFEST.exists() or MANIFEST.read_text() != text:
        fail("manifests/atefs.yaml differs from the chart: run scripts/chart-check.py --write")
    print(f"chart-check: lint clean; {len(default)} objects (default), {len(five)} (5 replicas), "
          f"{len(docs)} (manifests), {len(workload)} (kind-tests) valid for Kubernetes {', '.join(KUBE_VERSIONS)}; manifests up to date")


if __name__ == "__main__":
    main()
