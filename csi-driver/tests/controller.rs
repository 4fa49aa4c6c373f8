//! The Controller service as external-provisioner drives it, on the real binary against a real
//! three-replica cluster: CreateVolume makes the keys and the chain, idempotently by name; the
//! volume then stages and mounts on a node with the keys the controller kept; DeleteVolume
//! removes chain and keys. Keys are kept in a directory here (`--keys-dir`); the Secret store is
//! tested against a scripted API server in `secret_store.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{capability, rt, Csi, MountEnv, Plugin};
use csi_driver::pb;
use pb::volume_capability::access_mode::Mode;
use std::collections::HashMap;
use std::ffi::OsStr;
use tonic::Code;

fn create_req(name: &str, required: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability(Mode::MultiNodeMultiWriter)],
        ..Default::default()
    }
}

/// Volume `name` of `bytes` made through the controller (as external-provisioner asks).
async fn created(c: &mut common::Csi, name: &str, bytes: i64) -> pb::Volume {
    c.controller
        .create_volume(create_req(name, bytes))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
}

/// Volume `name` (64 MiB) made by the controller and staged (shared) at `staging` with the
/// record the controller kept: its id, and that record.
async fn create_and_stage(
    c: &mut common::Csi,
    keys_dir: &std::path::Path,
    name: &str,
    staging: &std::path::Path,
) -> (String, HashMap<String, String>) {
    let id = created(c, name, 64 << 20).await.volume_id;
    let secrets = secrets_of(keys_dir, name);
    c.node
        .node_stage_volume(common::stage_req(
            &id,
            staging,
            &secrets,
            Mode::MultiNodeMultiWriter,
        ))
        .await
        .unwrap();
    (id, secrets)
}

/// The secrets kubelet would pass: the record the controller wrote, as the Secret's data.
fn secrets_of(keys_dir: &std::path::Path, name: &str) -> HashMap<String, String> {
    let text =
        std::fs::read_to_string(keys_dir.join(csi_driver::keystore::record_name(name))).unwrap();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The plugin as node `node-a` and controller, keeping keys in a directory (returned).
fn controller_plugin(env: &MountEnv) -> (Plugin, std::path::PathBuf) {
    let keys_dir = env.tmp.path().join("keys");
    let plugin = Plugin::start_with(
        env.tmp.path(),
        "node-a",
        Some(&env.cluster),
        &[
            OsStr::new("--controller"),
            OsStr::new("--keys-dir"),
            keys_dir.as_os_str(),
        ],
    );
    (plugin, keys_dir)
}

/// Asserts that the cluster has no chain `id` (hex).
async fn assert_chain_gone(cluster: &common::DevCluster, id: &str) {
    let client = ate::remote::RemoteClient::new(ate::remote::RemoteOptions {
        endpoints: cluster.servers.clone(),
        ca_pem: Some(std::fs::read(cluster.ca()).unwrap()),
        deadline: std::time::Duration::from_secs(10),
    })
    .unwrap();
    match client.info(ate::ChainId::from_hex(id).unwrap()).await {
        Err(e) if e.is_not_found() => {}
        other => panic!("chain {id} is still there: {other:?}"),
    }
}

#[test]
fn volumes_are_created_mounted_and_deleted_through_the_controller() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let (cluster, tmp) = (&env.cluster, &env.tmp);
    let (plugin, keys_dir) = controller_plugin(&env);
    let staging = tmp.path().join("staging");
    let target = tmp.path().join("pod/volume");
    rt().block_on(async {
        let mut c = plugin.client().await;
        let caps = c
            .identity
            .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            caps.capabilities.len(),
            2,
            "CONTROLLER_SERVICE, VolumeExpansion ONLINE"
        );
        let ccaps = c
            .controller
            .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            ccaps.capabilities.len(),
            5,
            "CREATE_DELETE_VOLUME, EXPAND_VOLUME, CLONE_VOLUME, CREATE_DELETE_SNAPSHOT, LIST_SNAPSHOTS"
        );

        let name = "pvc-6f1d2c3e-0000-4000-8000-000000000001";
        let v = created(&mut c, name, 64 << 20).await;
        assert_eq!(v.capacity_bytes, 64 << 20);
        assert_eq!(v.volume_id.len(), 32);
        // A retry (the provisioner lost the answer) gives the same volume.
        let again = created(&mut c, name, 64 << 20).await;
        assert_eq!(again.volume_id, v.volume_id);
        // The same name asked bigger: not the volume that exists.
        let e = c
            .controller
            .create_volume(create_req(name, 128 << 20))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        // Bad requests.
        let mut r = create_req("", 1);
        assert_eq!(
            c.controller
                .create_volume(r.clone())
                .await
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        r = create_req("pvc-x", 1);
        r.volume_capabilities.clear();
        assert_eq!(
            c.controller.create_volume(r).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        r = create_req("pvc-x", 10);
        r.capacity_range.as_mut().unwrap().limit_bytes = 5;
        assert_eq!(
            c.controller.create_volume(r).await.unwrap_err().code(),
            Code::OutOfRange
        );

        let valid = c
            .controller
            .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: v.volume_id.clone(),
                volume_capabilities: vec![capability(Mode::SingleNodeWriter)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(valid.confirmed.is_some(), "{}", valid.message);
        let e = c
            .controller
            .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: ate::ChainId::random().to_hex(),
                volume_capabilities: vec![capability(Mode::SingleNodeWriter)],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);

        // The node mounts it with the controller's keys and the volume's context.
        let secrets = secrets_of(&keys_dir, name);
        c.node
            .node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(capability(Mode::SingleNodeWriter)),
                secrets: secrets.clone(),
                volume_context: v.volume_context.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let id = &v.volume_id;
        c.publish(id, &staging, &target, false).await.unwrap();
        std::fs::write(target.join("hello"), b"provisioned\n").unwrap();
        let stats = c.stats(id, &target).await.unwrap();
        let bytes = stats
            .usage
            .iter()
            .find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32)
            .unwrap();
        assert_eq!(
            bytes.total,
            64 << 20,
            "statfs reports the volume's capacity"
        );

        // Expanded while published: the mount's statfs follows; asked again or smaller, the
        // volume keeps its size; a limit below it, no range, bad and unknown ids are refused.
        let expand = |required: i64, limit: i64| pb::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: required,
                limit_bytes: limit,
            }),
            volume_capability: Some(capability(Mode::SingleNodeWriter)),
            ..Default::default()
        };
        for (required, limit) in [(128 << 20, 0), (128 << 20, 0), (32 << 20, 0)] {
            let r = c
                .controller
                .controller_expand_volume(expand(required, limit))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (r.capacity_bytes, r.node_expansion_required),
                (128 << 20, false)
            );
        }
        let mut no_range = expand(1, 0);
        no_range.capacity_range = None;
        let mut bad_id = expand(1, 0);
        bad_id.volume_id = "nope".into();
        let mut unknown = expand(1, 0);
        unknown.volume_id = ate::ChainId::random().to_hex();
        for (req, want) in [
            (expand(16 << 20, 32 << 20), Code::OutOfRange),
            (no_range, Code::InvalidArgument),
            (bad_id, Code::InvalidArgument),
            (unknown, Code::NotFound),
        ] {
            let e = c
                .controller
                .controller_expand_volume(req)
                .await
                .unwrap_err();
            assert_eq!(e.code(), want, "{e:?}");
        }
        // The mount reads its quota again at most once a second (atefs::quota::REFRESH).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stats = c.stats(id, &target).await.unwrap();
            let total = stats
                .usage
                .iter()
                .find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32)
                .unwrap()
                .total;
            if total == 128 << 20 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the mount still reports {total} bytes"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        c.unpublish(id, &target).await.unwrap();
        c.unstage(id, &staging).await.unwrap();

        // Delete, twice: chain and keys are gone.
        for _ in 0..2 {
            c.controller
                .delete_volume(pb::DeleteVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        assert!(!keys_dir
            .join(csi_driver::keystore::record_name(name))
            .exists());
        assert_chain_gone(cluster, &v.volume_id).await;
        // A malformed id is refused; an unknown one is already deleted.
        let e = c
            .controller
            .delete_volume(pb::DeleteVolumeRequest {
                volume_id: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        c.controller
            .delete_volume(pb::DeleteVolumeRequest {
                volume_id: ate::ChainId::random().to_hex(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
}

/// Stages and publishes volume `v` (named `name`) as kubelet would, under `root/tag`; returns
/// the pod's path.
async fn mount(
    c: &mut Csi,
    keys_dir: &std::path::Path,
    name: &str,
    v: &pb::Volume,
    root: &std::path::Path,
    tag: &str,
) -> std::path::PathBuf {
    let (staging, target) = (root.join(tag).join("staging"), root.join(tag).join("pod"));
    c.stage(
        &v.volume_id,
        &staging,
        &secrets_of(keys_dir, name),
        Mode::SingleNodeWriter,
    )
    .await
    .unwrap();
    c.publish(&v.volume_id, &staging, &target, false)
        .await
        .unwrap();
    target
}

async fn unmount(c: &mut Csi, v: &pb::Volume, root: &std::path::Path, tag: &str) {
    let (staging, target) = (root.join(tag).join("staging"), root.join(tag).join("pod"));
    c.unpublish(&v.volume_id, &target).await.unwrap();
    c.unstage(&v.volume_id, &staging).await.unwrap();
}

fn write_synced(path: &std::path::Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Snapshots and clones as external-snapshotter and external-provisioner drive them: a
/// snapshot of a mounted volume, a volume made from it and a clone of the volume each hold
/// what the volume held when they were taken, mount with keys of their own, and go their own
/// way after. Retries return what the first call made, without copying again.
#[test]
fn snapshots_and_clones_hold_the_volume_as_it_was_when_taken() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let (cluster, tmp) = (&env.cluster, &env.tmp);
    let (plugin, keys_dir) = controller_plugin(&env);
    let root = tmp.path();
    rt().block_on(async {
        let mut c = plugin.client().await;
        let create = |name: &str,
                      required: i64,
                      source: Option<pb::volume_content_source::Type>| {
            let mut r = create_req(name, required);
            r.volume_content_source = source.map(|t| pb::VolumeContentSource { r#type: Some(t) });
            r
        };
        let src = created(&mut c, "pvc-src", 32 << 20).await;
        let src_dir = mount(&mut c, &keys_dir, "pvc-src", &src, root, "src").await;
        write_synced(&src_dir.join("a"), b"before");

        let snap_req = pb::CreateSnapshotRequest {
            source_volume_id: src.volume_id.clone(),
            name: "snapshot-1".into(),
            ..Default::default()
        };
        let s1 = c
            .controller
            .create_snapshot(snap_req.clone())
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert!(s1.ready_to_use);
        assert_eq!(s1.size_bytes, 32 << 20);
        assert_eq!(s1.source_volume_id, src.volume_id);
        assert_ne!(s1.snapshot_id, src.volume_id);
        write_synced(&src_dir.join("a"), b"after");
        // A retry after the volume changed: the same snapshot, not a new copy.
        let s2 = c
            .controller
            .create_snapshot(snap_req.clone())
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(s2, s1);
        let mut other = snap_req.clone();
        other.source_volume_id = ate::ChainId::random().to_hex();
        let mut unknown = snap_req.clone();
        unknown.name = "snapshot-2".into();
        unknown.source_volume_id = ate::ChainId::random().to_hex();
        let mut nameless = snap_req.clone();
        nameless.name.clear();
        for (req, want) in [
            (other, Code::AlreadyExists),
            (unknown, Code::NotFound),
            (nameless, Code::InvalidArgument),
        ] {
            let e = c.controller.create_snapshot(req).await.unwrap_err();
            assert_eq!(e.code(), want, "{e:?}");
        }

        // A volume from the snapshot: asked smaller, it is as large as the snapshot.
        use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
        let from_snap = Type::Snapshot(SnapshotSource {
            snapshot_id: s1.snapshot_id.clone(),
        });
        let restored = c
            .controller
            .create_volume(create("pvc-restored", 16 << 20, Some(from_snap.clone())))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(restored.capacity_bytes, 32 << 20);
        assert_eq!(
            restored.content_source.clone().and_then(|s| s.r#type),
            Some(from_snap)
        );
        let restored_dir = mount(
            &mut c,
            &keys_dir,
            "pvc-restored",
            &restored,
            root,
            "restored",
        )
        .await;
        assert_eq!(std::fs::read(restored_dir.join("a")).unwrap(), b"before");

        // A clone of the volume as it is now, expanded since: as large as it is now.
        c.controller
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: src.volume_id.clone(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 48 << 20,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let clone = c
            .controller
            .create_volume(create(
                "pvc-clone",
                32 << 20,
                Some(Type::Volume(VolumeSource {
                    volume_id: src.volume_id.clone(),
                })),
            ))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(clone.capacity_bytes, 48 << 20);
        let clone_dir = mount(&mut c, &keys_dir, "pvc-clone", &clone, root, "clone").await;
        assert_eq!(std::fs::read(clone_dir.join("a")).unwrap(), b"after");

        // Two snapshots, listed: all, a page at a time, by id, by volume; bad requests.
        let s2 = c
            .controller
            .create_snapshot(pb::CreateSnapshotRequest {
                source_volume_id: clone.volume_id.clone(),
                name: "snapshot-of-clone".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        let list = |max_entries: i32, starting_token: &str, source: &str, id: &str| {
            pb::ListSnapshotsRequest {
                max_entries,
                starting_token: starting_token.into(),
                source_volume_id: source.into(),
                snapshot_id: id.into(),
                ..Default::default()
            }
        };
        let ids = |r: &pb::ListSnapshotsResponse| -> Vec<String> {
            r.entries
                .iter()
                .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
                .collect()
        };
        let mut both = vec![s1.snapshot_id.clone(), s2.snapshot_id.clone()];
        both.sort();
        let all = c
            .controller
            .list_snapshots(list(0, "", "", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ids(&all), both);
        assert!(all.next_token.is_empty());
        assert!(all.entries.iter().any(|e| e.snapshot.as_ref() == Some(&s1)));
        let first = c
            .controller
            .list_snapshots(list(1, "", "", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ids(&first), both[..1]);
        let rest = c
            .controller
            .list_snapshots(list(1, &first.next_token, "", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ids(&rest), both[1..]);
        assert!(rest.next_token.is_empty());
        for (req, want) in [
            (
                list(0, "", "", &s1.snapshot_id),
                vec![s1.snapshot_id.clone()],
            ),
            (
                list(0, "", &clone.volume_id, ""),
                vec![s2.snapshot_id.clone()],
            ),
            (list(0, "", "", &ate::ChainId::random().to_hex()), vec![]),
        ] {
            let got = c.controller.list_snapshots(req).await.unwrap().into_inner();
            assert_eq!(ids(&got), want);
        }
        for (req, want) in [
            (list(-1, "", "", ""), Code::InvalidArgument),
            (list(0, "not-a-token", "", ""), Code::Aborted),
        ] {
            let e = c.controller.list_snapshots(req).await.unwrap_err();
            assert_eq!(e.code(), want, "{e:?}");
        }

        // A clone whose caller gives up at once: the copy goes on, retries are ABORTED while
        // it runs (not a second copy into the same chain), then answered with the volume.
        let impatient = || {
            create(
                "pvc-impatient",
                32 << 20,
                Some(Type::Volume(VolumeSource {
                    volume_id: src.volume_id.clone(),
                })),
            )
        };
        let mut req = tonic::Request::new(impatient());
        req.set_timeout(std::time::Duration::from_millis(1));
        let e = c.controller.create_volume(req).await.unwrap_err();
        assert!(
            matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
            "{e:?}"
        );
        let late = loop {
            match c.controller.create_volume(impatient()).await {
                Ok(r) => break r.into_inner().volume.unwrap(),
                Err(e) if e.code() == Code::Aborted => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("a retry of the cancelled clone: {e:?}"),
            }
        };
        let late_dir = mount(&mut c, &keys_dir, "pvc-impatient", &late, root, "late").await;
        assert_eq!(std::fs::read(late_dir.join("a")).unwrap(), b"after");
        write_synced(&clone_dir.join("c"), b"clone only");
        write_synced(&restored_dir.join("a"), b"restored, then changed");
        assert!(!src_dir.join("c").exists());
        assert_eq!(std::fs::read(src_dir.join("a")).unwrap(), b"after");
        assert_ne!(
            secrets_of(&keys_dir, "pvc-clone"),
            secrets_of(&keys_dir, "pvc-src"),
            "a clone has keys of its own"
        );

        // Sources that are not there, or larger than the limit.
        let unknown = create(
            "pvc-x",
            1,
            Some(Type::Snapshot(SnapshotSource {
                snapshot_id: ate::ChainId::random().to_hex(),
            })),
        );
        let mut too_small = create(
            "pvc-y",
            1,
            Some(Type::Volume(VolumeSource {
                volume_id: src.volume_id.clone(),
            })),
        );
        too_small.capacity_range.as_mut().unwrap().limit_bytes = 1 << 20;
        for (req, want) in [(unknown, Code::NotFound), (too_small, Code::OutOfRange)] {
            let e = c.controller.create_volume(req).await.unwrap_err();
            assert_eq!(e.code(), want, "{e:?}");
        }

        for (v, tag) in [
            (&src, "src"),
            (&restored, "restored"),
            (&clone, "clone"),
            (&late, "late"),
        ] {
            unmount(&mut c, v, root, tag).await;
        }
        // The snapshot goes (twice: the second finds nothing), and so does its chain; the
        // volume made from it stays.
        for id in [&s1.snapshot_id, &s1.snapshot_id, &s2.snapshot_id] {
            c.controller
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    snapshot_id: id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        // Every copy ended; what they copied is counted (the clone's 3 copies of "after"
        // and the restored volume's "before" at least).
        let m = common::http_get(&plugin.metrics, "/metrics");
        assert!(m.contains("atefs_csi_copies_running 0"), "{m}");
        let copied: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("atefs_csi_copied_bytes_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(copied >= 11, "{copied} bytes copied");
        let left = c
            .controller
            .list_snapshots(list(0, "", "", ""))
            .await
            .unwrap()
            .into_inner();
        assert!(left.entries.is_empty(), "{left:?}");
        assert_chain_gone(cluster, &s1.snapshot_id).await;
        let e = c
            .controller
            .delete_snapshot(pb::DeleteSnapshotRequest {
                snapshot_id: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        for v in [&src, &restored, &clone, &late] {
            c.controller
                .delete_volume(pb::DeleteVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    });
}

/// `atefs-csi --rekey NAME` (what an operator runs in the controller's container when a
/// volume's Secret was exposed): refused while the volume is staged on a node; once it is
/// not, the volume gets new keys and its record holds them. Staged
/// with the new record it reads what was written before; the old record's envelope no longer
/// stages it. A run stopped after the chain changed and the record was removed (the record
/// moved to the pending place by hand here) makes the record again from the pending keys.
#[test]
fn a_rekeyed_volume_stages_with_its_new_record_and_not_the_old() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let (cluster, tmp) = (&env.cluster, &env.tmp);
    let (plugin, keys_dir) = controller_plugin(&env);
    let staging = tmp.path().join("staging");
    let name = "pvc-6f1d2c3e-0000-4000-8000-00000000000e";
    let run_rekey = || {
        std::process::Command::new(common::bin("atefs-csi"))
            .args(["--rekey", name, "--servers", &cluster.servers.join(",")])
            .arg("--keys-dir")
            .arg(&keys_dir)
            .arg("--ca")
            .arg(cluster.ca())
            .arg("--work-dir")
            .arg(tmp.path().join("work"))
            .output()
            .unwrap()
    };
    let rekey = || {
        let out = run_rekey();
        assert!(out.status.success(), "atefs-csi --rekey: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    rt().block_on(async {
        let mut c = plugin.client().await;
        let (id, old) = create_and_stage(&mut c, &keys_dir, name, &staging).await;
        std::fs::write(staging.join("before"), b"written under the old keys").unwrap();
        // Staged on a node: in use, refused.
        let refused = run_rekey();
        assert!(!refused.status.success(), "a staged volume was rekeyed");
        let why = String::from_utf8_lossy(&refused.stderr);
        assert!(why.contains("in use"), "{why}");
        assert_eq!(secrets_of(&keys_dir, name), old);
        assert_eq!(
            std::fs::read_dir(keys_dir.join("rekeys")).unwrap().count(),
            0,
            "a refused rekey left new keys behind"
        );
        c.node
            .node_unstage_volume(common::unstage_req(&id, &staging))
            .await
            .unwrap();

        let said = rekey();
        assert!(said.contains("new owner and data keys"), "{said}");
        let new = secrets_of(&keys_dir, name);
        assert_ne!(new["keyEnvelope"], old["keyEnvelope"]);
        assert_eq!(new["capacityBytes"], old["capacityBytes"]);
        assert_eq!(
            std::fs::read_dir(keys_dir.join("rekeys")).unwrap().count(),
            0,
            "the pending keys stayed"
        );
        let refused = c
            .node
            .node_stage_volume(common::stage_req(
                &id,
                &staging,
                &old,
                Mode::MultiNodeMultiWriter,
            ))
            .await;
        assert!(refused.is_err(), "the old envelope staged the volume");
        c.node
            .node_stage_volume(common::stage_req(
                &id,
                &staging,
                &new,
                Mode::MultiNodeMultiWriter,
            ))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(staging.join("before")).unwrap(),
            b"written under the old keys"
        );
        c.node
            .node_unstage_volume(common::unstage_req(&id, &staging))
            .await
            .unwrap();

        // Stopped between removing the record and making it again.
        // (A directory store names a record's file alike in each of its directories.)
        let record = csi_driver::keystore::record_name(name);
        std::fs::rename(
            keys_dir.join(&record),
            keys_dir.join("rekeys").join(&record),
        )
        .unwrap();
        let said = rekey();
        assert!(said.contains("made again"), "{said}");
        assert_eq!(secrets_of(&keys_dir, name), new);
        assert_eq!(
            std::fs::read_dir(keys_dir.join("rekeys")).unwrap().count(),
            0
        );
    });
    drop(plugin);
}

/// `atefs-csi --backup NAME` writes a volume's backup to standard output (what `kubectl exec`
/// hands back: the image has no shell), holding none of its content; once every chain server
/// has lost its disk, `atefs-csi --restore NAME` reads it from standard input and makes the
/// chain again under the keys the volume's record still holds, so it stages and reads as
/// before. A second restore refuses the volume the cluster now has.
#[test]
fn a_volume_backed_up_by_the_controller_comes_back_after_its_chain_servers_lose_it() {
    let Some(mut env) = MountEnv::start() else {
        return;
    };
    let (plugin, keys_dir) = controller_plugin(&env);
    let staging = env.tmp.path().join("staging");
    let name = "pvc-6f1d2c3e-0000-4000-8000-00000000000f";
    let csi = |what: &str, stdin: std::process::Stdio, cluster: &common::DevCluster| {
        std::process::Command::new(common::bin("atefs-csi"))
            .args([what, name, "--servers", &cluster.servers.join(",")])
            .arg("--keys-dir")
            .arg(&keys_dir)
            .arg("--ca")
            .arg(cluster.ca())
            .arg("--work-dir")
            .arg(env.tmp.path().join("work"))
            .stdin(stdin)
            .output()
            .unwrap()
    };
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let id = rt().block_on(async {
        let mut c = plugin.client().await;
        let (id, _) = create_and_stage(&mut c, &keys_dir, name, &staging).await;
        std::fs::write(staging.join("kept"), &content).unwrap();
        std::fs::write(staging.join("note"), b"written before the loss").unwrap();
        // Grown since it was made: its record keeps the first size, its chain the new one.
        c.controller
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 96 << 20,
                    limit_bytes: 0,
                }),
                volume_capability: Some(capability(Mode::MultiNodeMultiWriter)),
                ..Default::default()
            })
            .await
            .unwrap();
        c.node
            .node_unstage_volume(common::unstage_req(&id, &staging))
            .await
            .unwrap();
        id
    });

    let out = csi("--backup", std::process::Stdio::null(), &env.cluster);
    assert!(
        out.status.success(),
        "atefs-csi --backup: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = out.stdout;
    assert!(
        backup.starts_with(ate::backup::MAGIC),
        "{} bytes",
        backup.len()
    );
    let needle = b"written before the loss";
    assert!(!backup.windows(needle.len()).any(|w| w == needle));
    assert!(!backup.windows(4096).any(|w| w == &content[..4096]));
    let file = env.tmp.path().join("pv.backup");
    std::fs::write(&file, &backup).unwrap();

    // Every chain server loses its disk (the certificates stay: the cluster is "the same").
    env.cluster.stop();
    for e in std::fs::read_dir(env.cluster.dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "certs" && e.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    env.cluster.restart();

    let restore = |cluster: &common::DevCluster| {
        csi(
            "--restore",
            std::fs::File::open(&file).unwrap().into(),
            cluster,
        )
    };
    let out = restore(&env.cluster);
    assert!(
        out.status.success(),
        "atefs-csi --restore: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored"),
        "{out:?}"
    );
    let again = restore(&env.cluster);
    assert!(!again.status.success(), "a restore overwrote a volume");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists on the cluster"),
        "{again:?}"
    );

    rt().block_on(async {
        let mut c = plugin.client().await;
        let secrets = secrets_of(&keys_dir, name);
        c.node
            .node_stage_volume(common::stage_req(
                &id,
                &staging,
                &secrets,
                Mode::MultiNodeMultiWriter,
            ))
            .await
            .unwrap();
        assert!(std::fs::read(staging.join("kept")).unwrap() == content);
        assert_eq!(std::fs::read(staging.join("note")).unwrap(), needle);
        // The size it had grown to, not the one its record was made with.
        let fs = rustix::fs::statvfs(&staging).unwrap();
        assert_eq!(fs.f_blocks * fs.f_frsize, 96 << 20);
        c.node
            .node_unstage_volume(common::unstage_req(&id, &staging))
            .await
            .unwrap();
    });
    drop(plugin);
}

/// `atefs-csi --backup-all DIR --keep 2` (what the chart's scheduled backups run) writes a
/// backup of every volume into a directory of its own, each verifying with that volume's
/// keys, and keeps the newest two; a volume that cannot be backed up (its directory taken by
/// a file here) fails the run but not the others' backups.
#[test]
fn scheduled_backups_cover_every_volume_and_keep_the_newest() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let (plugin, keys_dir) = controller_plugin(&env);
    let names = [
        "pvc-6f1d2c3e-0000-4000-8000-000000000010",
        "pvc-6f1d2c3e-0000-4000-8000-000000000011",
    ];
    let staging = env.tmp.path().join("staging");
    rt().block_on(async {
        let mut c = plugin.client().await;
        let (id, _) = create_and_stage(&mut c, &keys_dir, names[0], &staging).await;
        std::fs::write(staging.join("f"), b"backed up on schedule").unwrap();
        c.node
            .node_unstage_volume(common::unstage_req(&id, &staging))
            .await
            .unwrap();
        created(&mut c, names[1], 32 << 20).await;
    });
    let dir = env.tmp.path().join("backups");
    let run = || {
        std::process::Command::new(common::bin("atefs-csi"))
            .arg("--backup-all")
            .arg(&dir)
            .args(["--keep", "2", "--servers", &env.cluster.servers.join(",")])
            .arg("--keys-dir")
            .arg(&keys_dir)
            .arg("--ca")
            .arg(env.cluster.ca())
            .arg("--work-dir")
            .arg(env.tmp.path().join("work"))
            .output()
            .unwrap()
    };
    let backups_of = |name: &str| -> Vec<std::path::PathBuf> {
        let own = dir.join(csi_driver::keystore::record_name(name));
        let mut files: Vec<_> = std::fs::read_dir(own)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    };
    let mut first = Vec::new();
    for round in 0..3 {
        let out = run();
        assert!(out.status.success(), "round {round}: {out:?}");
        if round == 0 {
            first = backups_of(names[0]);
        }
    }
    for name in names {
        let files = backups_of(name);
        assert_eq!(files.len(), 2, "{name}: {files:?}");
        let keys =
            csi_driver::volume_id::envelope_from_hex(&secrets_of(&keys_dir, name)["keyEnvelope"])
                .unwrap();
        for f in &files {
            let b = ate::backup::verify_backup(f, &keys).unwrap();
            assert_eq!(b.summary.chain, keys.chain);
        }
    }
    assert!(
        !backups_of(names[0]).contains(&first[0]),
        "the oldest backup was kept"
    );

    // The second volume's directory is taken: it fails, the first is still backed up.
    let second = dir.join(csi_driver::keystore::record_name(names[1]));
    std::fs::remove_dir_all(&second).unwrap();
    std::fs::write(&second, b"in the way").unwrap();
    let before = backups_of(names[0]);
    let out = run();
    assert!(
        !out.status.success(),
        "a failed volume went unreported: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(names[1]),
        "{out:?}"
    );
    let after = backups_of(names[0]);
    assert_eq!(after.len(), 2);
    assert_ne!(after, before, "the first volume was not backed up");
    drop(plugin);
}
