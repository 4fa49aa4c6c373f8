//! The CSI node plugin as kubelet drives it: the real `atefs-csi` binary on a unix socket,
//! called by a CSI client, mounting volumes of a real three-replica chain-server cluster with
//! FUSE and bind mounts. The mount tests need root and /dev/fuse (skipped otherwise).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use common::{capability, new_volume, rt, stage_req, MountEnv, Plugin};
use csi_driver::pb;
use pb::volume_capability::access_mode::Mode;
use std::path::Path;
use tonic::Code;

fn is_atefs_mount(p: &Path) -> bool {
    csi_driver::mountinfo::at(p)
        .unwrap()
        .is_some_and(|m| csi_driver::mountinfo::is_atefs(&m))
}

#[test]
fn identity_and_node_info_answer_as_the_spec_says() {
    let tmp = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(tmp.path(), "node-a", None);
    rt().block_on(async {
        let mut c = plugin.client().await;
        let info = c
            .identity
            .get_plugin_info(pb::GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, csi_driver::identity::DRIVER_NAME);
        assert!(!info.vendor_version.is_empty());
        let probe = c
            .identity
            .probe(pb::ProbeRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(probe.ready, Some(true));
        let caps = c
            .identity
            .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            caps.capabilities.is_empty(),
            "a node-only plugin has no controller service"
        );

        let node = c
            .node
            .node_get_info(pb::NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(node.node_id, "node-a");
        let caps = c
            .node
            .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        use pb::node_service_capability::{rpc::Type, Type as Cap};
        let types: Vec<i32> = caps
            .capabilities
            .iter()
            .filter_map(|c| c.r#type.as_ref().map(|Cap::Rpc(r)| r.r#type))
            .collect();
        for t in [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::VolumeCondition,
        ] {
            assert!(types.contains(&(t as i32)), "{t:?} missing from {types:?}");
        }
        assert!(!types.contains(&(Type::ExpandVolume as i32)));
    });
    let m = common::http_get(&plugin.metrics, "/metrics");
    assert!(m.contains("atefs_csi_mounts"), "{m}");
    assert!(
        m.contains(r#"atefs_csi_calls_total{method="NodeGetInfo",code="OK"} 1"#),
        "{m}"
    );
    assert!(common::http_get(&plugin.metrics, "/health").contains(" 200 "));
}

#[test]
fn bad_requests_get_the_spec_codes_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(tmp.path(), "node-a", None);
    let (id, secrets) = new_volume();
    let (other, other_secrets) = new_volume();
    let staging = tmp.path().join("staging");
    let target = tmp.path().join("target");
    rt().block_on(async {
        let mut c = plugin.client().await;
        let code = |r: Result<tonic::Response<pb::NodeStageVolumeResponse>, tonic::Status>| {
            r.err().map(|s| s.code())
        };
        let ok = stage_req(&id, &staging, &secrets, Mode::SingleNodeWriter);

        let mut r = ok.clone();
        r.volume_id.clear();
        assert_eq!(
            code(c.node.node_stage_volume(r).await),
            Some(Code::InvalidArgument)
        );
        let mut r = ok.clone();
        r.volume_id = "../../etc".into();
        assert_eq!(
            code(c.node.node_stage_volume(r).await),
            Some(Code::InvalidArgument)
        );
        let mut r = ok.clone();
        r.staging_target_path = "relative/dir".into();
        assert_eq!(
            code(c.node.node_stage_volume(r).await),
            Some(Code::InvalidArgument)
        );
        let mut r = ok.clone();
        r.volume_capability = None;
        assert_eq!(
            code(c.node.node_stage_volume(r).await),
            Some(Code::InvalidArgument)
        );
        let mut r = ok.clone();
        r.volume_capability = Some(pb::VolumeCapability {
            access_type: Some(pb::volume_capability::AccessType::Block(Default::default())),
            access_mode: capability(Mode::SingleNodeWriter).access_mode,
        });
        assert_eq!(
            code(c.node.node_stage_volume(r).await),
            Some(Code::InvalidArgument)
        );
        let mut r = ok.clone();
        r.secrets.clear();
        assert_eq!(
            code(c.node.node_stage_volume(r).await),
            Some(Code::InvalidArgument)
        );
        // Another volume's keys: refused before anything is mounted or written.
        let mut r = ok.clone();
        r.secrets = other_secrets.clone();
        let e = c.node.node_stage_volume(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(&other), "{}", e.message());
        assert!(
            !e.message()
                .contains(&other_secrets[csi_driver::volume_id::KEY_ENVELOPE]),
            "the secret is echoed"
        );
        // No servers configured and none named by the volume.
        let e = c.node.node_stage_volume(ok.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(!is_atefs_mount(&staging));
        assert!(!plugin.state.join("volumes").join(&id).join("keys").exists());

        // Publish of a volume that is not staged.
        let e = c.publish(&id, &staging, &target, false).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        // Stats of a path with no volume.
        let e = c.stats(&id, tmp.path()).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        // Undoing what was never done succeeds (kubelet retries after crashes).
        c.unpublish(&id, &target).await.unwrap();
        c.unstage(&id, &staging).await.unwrap();
        // Expansion is not offered.
        let e = c
            .node
            .node_expand_volume(pb::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
    });
    let m = common::http_get(&plugin.metrics, "/metrics");
    assert!(
        m.contains(r#"atefs_csi_calls_total{method="NodeStageVolume",code="INVALID_ARGUMENT"} 8"#),
        "{m}"
    );
}

#[test]
fn a_volume_is_staged_published_shared_between_nodes_and_unstaged() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let (cluster, tmp) = (&env.cluster, &env.tmp);
    let a = Plugin::start(tmp.path(), "node-a", Some(cluster));
    let b = Plugin::start(tmp.path(), "node-b", Some(cluster));
    let (id, secrets) = new_volume();
    let stage_a = tmp.path().join("a/staging");
    let rw = tmp.path().join("a/pod-1/volume");
    let ro = tmp.path().join("a/pod-2/volume");
    let stage_b = tmp.path().join("b/staging");
    let rw_b = tmp.path().join("b/pod-3/volume");
    rt().block_on(async {
        let mut ca = a.client().await;
        let mut cb = b.client().await;
        // Twice: a repeated call is a success that changes nothing.
        for _ in 0..2 {
            ca.stage(&id, &stage_a, &secrets, Mode::MultiNodeMultiWriter)
                .await
                .unwrap();
        }
        assert!(is_atefs_mount(&stage_a));
        for _ in 0..2 {
            ca.publish(&id, &stage_a, &rw, false).await.unwrap();
            ca.publish(&id, &stage_a, &ro, true).await.unwrap();
        }
        // The same target read-only now: incompatible with what is there.
        let e = ca.publish(&id, &stage_a, &rw, true).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);

        std::fs::write(rw.join("from-pod-1"), b"written on node a\n").unwrap();
        assert_eq!(
            std::fs::read(ro.join("from-pod-1")).unwrap(),
            b"written on node a\n"
        );
        let e = std::fs::write(ro.join("nope"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");

        // Node b stages the same volume: it sees node a's file, and a sees b's.
        cb.stage(&id, &stage_b, &secrets, Mode::MultiNodeMultiWriter)
            .await
            .unwrap();
        cb.publish(&id, &stage_b, &rw_b, false).await.unwrap();
        assert_eq!(
            std::fs::read(rw_b.join("from-pod-1")).unwrap(),
            b"written on node a\n"
        );
        std::fs::write(rw_b.join("from-pod-3"), b"written on node b\n").unwrap();
        assert_eq!(
            std::fs::read(rw.join("from-pod-3")).unwrap(),
            b"written on node b\n"
        );

        let stats = ca.stats(&id, &rw).await.unwrap();
        let bytes = stats
            .usage
            .iter()
            .find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32)
            .unwrap();
        assert!(
            bytes.total > 0 && bytes.used > 0 && bytes.available > 0,
            "{bytes:?}"
        );
        assert!(stats
            .usage
            .iter()
            .any(|u| u.unit == pb::volume_usage::Unit::Inodes as i32 && u.used >= 2));
        assert!(!stats.volume_condition.unwrap().abnormal);

        // Unstage while still published is refused: the pods' mounts would keep it alive.
        let e = ca.unstage(&id, &stage_a).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);

        for _ in 0..2 {
            ca.unpublish(&id, &rw).await.unwrap();
            ca.unpublish(&id, &ro).await.unwrap();
        }
        assert!(
            !rw.exists() && !ro.exists(),
            "unpublish removes the target it made"
        );
        let pid: u32 = std::fs::read_to_string(a.state.join("volumes").join(&id).join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for _ in 0..2 {
            ca.unstage(&id, &stage_a).await.unwrap();
        }
        assert!(!is_atefs_mount(&stage_a));
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the mount daemon has exited"
        );
        assert!(
            !a.state.join("volumes").join(&id).exists(),
            "keys and cache are gone from the node"
        );

        // Everything written on a is in the cluster: b reads it, and a fresh stage on a too.
        assert_eq!(
            std::fs::read(rw_b.join("from-pod-1")).unwrap(),
            b"written on node a\n"
        );
        ca.stage(&id, &stage_a, &secrets, Mode::SingleNodeWriter)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(stage_a.join("from-pod-3")).unwrap(),
            b"written on node b\n"
        );
        ca.unstage(&id, &stage_a).await.unwrap();
        cb.unpublish(&id, &rw_b).await.unwrap();
        cb.unstage(&id, &stage_b).await.unwrap();
        assert!(!is_atefs_mount(&stage_b));
    });
}

fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}

#[test]
fn a_restarted_plugin_carries_on_with_the_volumes_it_mounted() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let (cluster, tmp) = (&env.cluster, &env.tmp);
    let (id, secrets) = new_volume();
    let staging = tmp.path().join("staging");
    let target = tmp.path().join("pod/volume");
    let mut first = Plugin::start(tmp.path(), "node-a", Some(cluster));
    rt().block_on(async {
        let mut c = first.client().await;
        c.stage(&id, &staging, &secrets, Mode::SingleNodeWriter)
            .await
            .unwrap();
        c.publish(&id, &staging, &target, false).await.unwrap();
    });
    let pid: u32 = std::fs::read_to_string(first.state.join("volumes").join(&id).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A crash of the plugin: the pod's volume keeps working.
    first.kill();
    std::fs::write(target.join("after-crash"), b"still here\n").unwrap();
    let second = Plugin::start(tmp.path(), "node-a", Some(cluster));
    rt().block_on(async {
        let mut c = second.client().await;
        // kubelet retries what it had not seen answered: both succeed without a second mount.
        c.stage(&id, &staging, &secrets, Mode::SingleNodeWriter)
            .await
            .unwrap();
        c.publish(&id, &staging, &target, false).await.unwrap();
        let atefs_mounts = csi_driver::mountinfo::read()
            .unwrap()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(tmp.path()))
            .count();
        assert_eq!(atefs_mounts, 2, "staging + one publish");
        c.unpublish(&id, &target).await.unwrap();
        // The daemon is no longer this plugin's child: it is waited for through a pidfd.
        c.unstage(&id, &staging).await.unwrap();
        assert!(!is_atefs_mount(&staging));
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "the old daemon has exited"
        );
        // What was written while the plugin was down reached the cluster.
        c.stage(&id, &staging, &secrets, Mode::SingleNodeWriter)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(staging.join("after-crash")).unwrap(),
            b"still here\n"
        );
        c.unstage(&id, &staging).await.unwrap();
    });
}

/// SIGKILLs the mount daemon of volume `id` and waits until it is gone (the kernel fails its
/// connection then).
fn kill_daemon(plugin: &Plugin, id: &str) {
    let pid: i32 = std::fs::read_to_string(plugin.state.join("volumes").join(id).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut fds, None).unwrap();
}

/// A staged volume whose daemon died is mounted afresh when kubelet publishes it to the next
/// pod (or stages it again): that pod's mount works and holds what was committed; the dead
/// mount stays with the pod that had it until it is unpublished; everything then unstages
/// cleanly.
#[test]
fn a_dead_staged_mount_is_mounted_again_for_the_next_pod() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let (cluster, tmp) = (&env.cluster, &env.tmp);
    let (id, secrets) = new_volume();
    let staging = tmp.path().join("staging");
    let (old_pod, new_pod) = (
        tmp.path().join("pod-1/volume"),
        tmp.path().join("pod-2/volume"),
    );
    let plugin = Plugin::start(tmp.path(), "node-a", Some(cluster));
    rt().block_on(async {
        let mut c = plugin.client().await;
        c.stage(&id, &staging, &secrets, Mode::SingleNodeMultiWriter)
            .await
            .unwrap();
        c.publish(&id, &staging, &old_pod, false).await.unwrap();
        let mut f = std::fs::File::create(old_pod.join("kept")).unwrap();
        f.write_all(b"committed before the daemon died").unwrap();
        f.sync_all().unwrap();
        drop(f);
        kill_daemon(&plugin, &id);
        assert!(std::fs::read(old_pod.join("kept")).is_err());

        // kubelet stages once per node: the next pod's publish alone finds the mount dead
        // and mounts the volume again.
        c.publish(&id, &staging, &new_pod, false).await.unwrap();
        assert_eq!(
            std::fs::read(new_pod.join("kept")).unwrap(),
            b"committed before the daemon died"
        );
        std::fs::write(new_pod.join("later"), b"after").unwrap();
        assert!(
            std::fs::read(old_pod.join("kept")).is_err(),
            "the old pod keeps the dead mount"
        );
        // A repeated stage of the live mount changes nothing.
        c.stage(&id, &staging, &secrets, Mode::SingleNodeMultiWriter)
            .await
            .unwrap();
        assert_eq!(std::fs::read(new_pod.join("later")).unwrap(), b"after");
        // Dead again: a stage mounts it afresh too.
        kill_daemon(&plugin, &id);
        c.stage(&id, &staging, &secrets, Mode::SingleNodeMultiWriter)
            .await
            .unwrap();
        assert!(
            std::fs::read(new_pod.join("later")).is_err(),
            "that pod keeps the dead mount"
        );
        let third = tmp.path().join("pod-3/volume");
        c.publish(&id, &staging, &third, false).await.unwrap();
        assert_eq!(std::fs::read(third.join("later")).unwrap(), b"after");
        c.unpublish(&id, &third).await.unwrap();

        c.unpublish(&id, &old_pod).await.unwrap();
        c.unpublish(&id, &new_pod).await.unwrap();
        c.unstage(&id, &staging).await.unwrap();
        assert!(!is_atefs_mount(&staging));
        assert!(!plugin.state.join("volumes").join(&id).exists());
    });
    let m = common::http_get(&plugin.metrics, "/metrics");
    assert!(m.contains("atefs_csi_daemon_failures_total 2"), "{m}");
}

#[test]
fn a_dead_mount_daemon_is_reported_and_the_volume_can_be_unstaged() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let (cluster, tmp) = (&env.cluster, &env.tmp);
    let (id, secrets) = new_volume();
    let staging = tmp.path().join("staging");
    let target = tmp.path().join("pod/volume");
    let plugin = Plugin::start(tmp.path(), "node-a", Some(cluster));
    rt().block_on(async {
        let mut c = plugin.client().await;
        c.stage(&id, &staging, &secrets, Mode::SingleNodeWriter)
            .await
            .unwrap();
        c.publish(&id, &staging, &target, false).await.unwrap();
        let before = c.stats(&id, &target).await.unwrap();
        assert!(!before.volume_condition.unwrap().abnormal);

        kill_daemon(&plugin, &id);

        let after = c.stats(&id, &target).await.unwrap();
        let cond = after.volume_condition.unwrap();
        assert!(cond.abnormal, "{cond:?}");
        assert!(after.usage.is_empty());

        c.unpublish(&id, &target).await.unwrap();
        c.unstage(&id, &staging).await.unwrap();
        assert!(!is_atefs_mount(&staging));
        assert!(!plugin.state.join("volumes").join(&id).exists());
        let failed: Vec<_> = std::fs::read_dir(plugin.state.join("failed"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(failed.len(), 1, "the failed volume's cache is kept aside");
        assert!(!failed[0].join("keys").exists(), "but not its keys");
    });
    let m = common::http_get(&plugin.metrics, "/metrics");
    assert!(m.contains("atefs_csi_daemon_failures_total 1"), "{m}");
}

/// A mount that cannot reach the chain servers (all of them stopped for longer than the
/// mount's timeout, here the StorageClass mount option `timeout=2`) is reported as an abnormal
/// volume condition with the reason, and as normal again once the servers are back and it
/// follows its chain, without being staged again (before session 29 such a mount stayed
/// broken and was reported normal). A timeout out of range is refused.
#[test]
fn a_mount_that_cannot_reach_the_chain_servers_is_reported_until_it_can() {
    let Some(mut env) = MountEnv::start() else {
        return;
    };
    let (id, secrets) = new_volume();
    let staging = env.tmp.path().join("staging");
    let target = env.tmp.path().join("pod/volume");
    let plugin = Plugin::start(env.tmp.path(), "node-a", Some(&env.cluster));
    let rt = rt();
    let mut c = rt.block_on(plugin.client());
    let condition = |c: &mut common::Csi| {
        let stats = rt.block_on(c.stats(&id, &target)).unwrap();
        stats.volume_condition.unwrap()
    };
    let with_timeout = |t: &str| {
        let mut req = common::stage_req(&id, &staging, &secrets, Mode::SingleNodeMultiWriter);
        if let Some(pb::volume_capability::AccessType::Mount(m)) = req
            .volume_capability
            .as_mut()
            .and_then(|c| c.access_type.as_mut())
        {
            m.mount_flags = vec!["noatime".into(), format!("timeout={t}")];
        }
        req
    };
    rt.block_on(async {
        let e = c
            .node
            .node_stage_volume(with_timeout("0"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        c.node.node_stage_volume(with_timeout("2")).await.unwrap();
        c.publish(&id, &staging, &target, false).await.unwrap();
    });
    let pid = std::fs::read_to_string(plugin.state.join("volumes").join(&id).join("pid")).unwrap();
    let args = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    assert!(
        args.windows(17).any(|w| w == b"--timeout-secs\x002\x00"),
        "{}",
        String::from_utf8_lossy(&args)
    );
    std::fs::write(target.join("f"), b"before").unwrap();
    assert!(!condition(&mut c).abnormal);

    env.cluster.stop();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut cond = condition(&mut c);
    while !cond.abnormal && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(250));
        cond = condition(&mut c);
    }
    assert!(cond.abnormal, "never reported: {cond:?}");
    assert!(
        cond.message.contains("cannot reach the chain servers")
            && cond.message.contains("reconnecting"),
        "{}",
        cond.message
    );

    env.cluster.restart();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cond.abnormal && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(250));
        cond = condition(&mut c);
    }
    assert!(!cond.abnormal, "still abnormal: {cond:?}");
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"before");
    std::fs::write(target.join("g"), b"after").unwrap();
    rt.block_on(async {
        c.unpublish(&id, &target).await.unwrap();
        c.unstage(&id, &staging).await.unwrap();
    });
}
