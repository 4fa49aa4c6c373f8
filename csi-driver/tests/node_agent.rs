//! The node agent keeps the pods' mounts through a restart of the plugin's container. The
//! plugin and the agent each run in a PID namespace of their own (`unshare --pid --fork
//! --kill-child`), as in their containers: when the first process of a namespace dies, the
//! kernel kills every other process in it. Without an agent the mount daemons are the
//! plugin's and die with it (the control); with one they are the agent's, and a pod's volume
//! stays usable while the plugin is killed and started again, which then unstages it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{new_volume, rt, socket_dead, Agent, MountEnv, Plugin};
use csi_driver::pb;
use pb::volume_capability::access_mode::Mode;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits (at most 20 s) until `what` holds of `path`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True while `dir` answers statfs (its file system's daemon is alive).
fn alive(dir: &Path) -> bool {
    rustix::fs::statfs(dir).is_ok()
}

/// A new volume staged at `dir`/staging and published to a pod's `dir`/pod/volume, where the
/// pod writes `before`; the volume (id, secrets) and the pod's path.
fn use_a_volume(
    rt: &tokio::runtime::Runtime,
    plugin: &Plugin,
    dir: &Path,
) -> (
    (String, std::collections::HashMap<String, String>),
    std::path::PathBuf,
) {
    let (id, secrets) = new_volume();
    let (staging, target) = (dir.join("staging"), dir.join("pod/volume"));
    rt.block_on(async {
        let mut c = plugin.client().await;
        c.stage(&id, &staging, &secrets, Mode::MultiNodeMultiWriter)
            .await
            .unwrap();
        c.publish(&id, &staging, &target, false).await.unwrap();
    });
    std::fs::write(target.join("before"), b"written before the restart").unwrap();
    ((id, secrets), target)
}

type Volume<'a> = (&'a str, &'a std::collections::HashMap<String, String>);

/// A plugin that came after a restart repeats the stage and publish of a mounted volume
/// (succeeding without a second mount), then unpublishes and unstages it; no mount is left.
fn repeat_then_unstage(
    rt: &tokio::runtime::Runtime,
    plugin: &Plugin,
    (id, secrets): Volume<'_>,
    staging: &Path,
    target: &Path,
) {
    rt.block_on(async {
        let mut c = plugin.client().await;
        c.stage(id, staging, secrets, Mode::MultiNodeMultiWriter)
            .await
            .unwrap();
        c.publish(id, staging, target, false).await.unwrap();
        c.unpublish(id, target).await.unwrap();
        c.unstage(id, staging).await.unwrap();
    });
    assert!(csi_driver::mountinfo::at(staging).unwrap().is_none());
}

/// Stages the volume afresh, reads `name` from it (what the cluster has) and unstages it.
fn read_staged(
    rt: &tokio::runtime::Runtime,
    plugin: &Plugin,
    (id, secrets): Volume<'_>,
    staging: &Path,
    name: &str,
) -> Vec<u8> {
    rt.block_on(async {
        let mut c = plugin.client().await;
        c.stage(id, staging, secrets, Mode::MultiNodeMultiWriter)
            .await
            .unwrap();
    });
    let content = std::fs::read(staging.join(name)).unwrap();
    rt.block_on(async {
        plugin.client().await.unstage(id, staging).await.unwrap();
    });
    content
}

#[test]
fn without_an_agent_a_plugin_container_restart_ends_the_mount() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let tmp = env.tmp.path();
    let mut plugin = Plugin::start_contained(tmp, "node-a", Some(&env.cluster), &[]);
    let (_, target) = use_a_volume(&rt(), &plugin, tmp);
    plugin.kill();
    // The daemon was in the plugin's namespace: the kernel kills it, and the pod's volume
    // stops answering (ENOTCONN) — what the agent is for.
    wait_until("the mount dies with the plugin", || !alive(&target));
    assert!(std::fs::read(target.join("before")).is_err());
}

#[test]
fn the_node_agents_mounts_outlive_a_plugin_container_restart() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let tmp = env.tmp.path();
    let agent = Agent::start(tmp);
    let with_agent = [std::ffi::OsStr::new("--node-agent"), &agent.endpoint()];
    let start = || Plugin::start_contained(tmp, "node-a", Some(&env.cluster), &with_agent);
    let mut plugin = start();
    let rt = rt();
    let ((id, secrets), target) = use_a_volume(&rt, &plugin, tmp);
    let staging = tmp.join("staging");
    assert_eq!(agent.metric("atefs_node_agent_daemons"), 1);

    plugin.kill();
    wait_until("the plugin is gone", || socket_dead(&plugin.socket));
    // The pod's volume still works: read what was there, write and fsync more.
    assert!(alive(&target));
    assert_eq!(
        std::fs::read(target.join("before")).unwrap(),
        b"written before the restart"
    );
    let mut f = std::fs::File::create(target.join("during")).unwrap();
    f.write_all(b"written while the plugin was down").unwrap();
    f.sync_all().unwrap();
    drop(f);

    // A new plugin takes over: repeated calls succeed without a second mount, and it
    // unstages the volume through the agent, which waits for its daemon to exit.
    let plugin = start();
    repeat_then_unstage(&rt, &plugin, (&id, &secrets), &staging, &target);
    assert!(
        !plugin.state.join("volumes").join(&id).exists(),
        "state kept"
    );
    assert_eq!(agent.metric("atefs_node_agent_daemons"), 0);
    assert_eq!(agent.metric("atefs_node_agent_mounts_total"), 1);
    assert_eq!(agent.metric("atefs_node_agent_failed_exits_total"), 0);

    // What was written while the plugin was down is on the cluster.
    assert_eq!(
        read_staged(&rt, &plugin, (&id, &secrets), &staging, "during"),
        b"written while the plugin was down"
    );
}

/// A rolling update of the node agent (the chart's `maxSurge: 1`): a new agent starts beside
/// the old one, takes its mounts over through the registry (`atefs take-over`) before it says
/// it is ready, and the old agent's container then goes (all its processes killed). The pod's
/// volume and a file it holds open carry on, and the new agent unstages the volume.
#[test]
fn a_new_node_agent_takes_the_mounts_over_and_the_old_one_can_go() {
    let Some(env) = MountEnv::start() else {
        return;
    };
    let tmp = env.tmp.path();
    let registry = tmp.join("agent-registry");
    let agent_args = [std::ffi::OsStr::new("--registry"), registry.as_os_str()];
    let mut old = Agent::start_with(&tmp.join("old-agent.sock"), &agent_args);
    let with = |a: &Agent| {
        Plugin::start_contained(
            tmp,
            "node-a",
            Some(&env.cluster),
            &[std::ffi::OsStr::new("--node-agent"), &a.endpoint()],
        )
    };
    let mut plugin = with(&old);
    let rt = rt();
    let ((id, secrets), target) = use_a_volume(&rt, &plugin, tmp);
    let staging = tmp.join("staging");
    let mut open = std::fs::File::create(target.join("open")).unwrap();
    open.write_all(b"first half, ").unwrap();

    let new = Agent::start_with(&tmp.join("new-agent.sock"), &agent_args);
    assert_eq!(new.metric("atefs_node_agent_taken_over_total"), 1);
    assert_eq!(new.metric("atefs_node_agent_daemons"), 1);
    old.kill();
    wait_until("the old agent is gone", || socket_dead(&old.socket));

    assert!(alive(&target));
    open.write_all(b"second half").unwrap();
    open.sync_all().unwrap();
    drop(open);
    assert_eq!(
        std::fs::read(target.join("before")).unwrap(),
        b"written before the restart"
    );

    plugin.kill();
    let plugin = with(&new);
    repeat_then_unstage(&rt, &plugin, (&id, &secrets), &staging, &target);
    assert_eq!(new.metric("atefs_node_agent_daemons"), 0);
    assert_eq!(new.metric("atefs_node_agent_failed_exits_total"), 0);
    let left: Vec<_> = std::fs::read_dir(&registry).unwrap().flatten().collect();
    assert!(left.is_empty(), "records left: {left:?}");

    // What went through the taken-over mount is on the cluster.
    assert_eq!(
        read_staged(&rt, &plugin, (&id, &secrets), &staging, "open"),
        b"first half, second half"
    );
}
