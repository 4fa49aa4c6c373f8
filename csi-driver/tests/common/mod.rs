//! Real parts for the CSI tests: the plugin binary on a unix socket, a CSI client as kubelet
//! uses it, and a local three-replica chain-server cluster (`chain-server dev-cluster`). Every
//! process is stopped and every mount undone on drop, also when a test fails.
#![allow(dead_code, clippy::unwrap_used)]

use csi_driver::pb;
use pb::volume_capability::access_mode::Mode;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Status;

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Ports no other test of this run uses.
pub fn ports(n: u16) -> u16 {
    // Below the ephemeral range, apart from the chain-server tests' 20000-32699.
    let base = 10_000 + (std::process::id() % 100) as u16 * 100;
    base + NEXT_PORT.fetch_add(n, Ordering::SeqCst)
}

pub fn bin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_atefs-csi")).with_file_name(name);
    assert!(
        p.exists(),
        "{} missing: build the workspace (cargo build --workspace)",
        p.display()
    );
    p
}

pub fn can_mount() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n");
    if !ok {
        eprintln!("skipped: needs root and /dev/fuse");
    }
    ok
}

/// SIGTERM, and waits. A [`contained`] child leads a process group: the signal goes to the
/// group, since `unshare` ignores SIGTERM itself and waits for the process it runs.
fn terminate(child: &mut Child) {
    use rustix::process::{kill_process, kill_process_group, Signal};
    let pid = rustix::process::Pid::from_child(child);
    let _ = kill_process_group(pid, Signal::TERM).or_else(|_| kill_process(pid, Signal::TERM));
    let _ = child.wait();
}

/// `chain-server dev-cluster`: three replicas with TLS on loopback.
pub struct DevCluster {
    pub dir: tempfile::TempDir,
    pub servers: Vec<String>,
    base: u16,
    child: Option<Child>,
}

impl DevCluster {
    pub fn start() -> DevCluster {
        let dir = tempfile::tempdir().unwrap();
        let base = ports(40);
        let mut c = DevCluster {
            dir,
            servers: (1..=3)
                .map(|i| format!("127.0.0.1:{}", base + 10 * i))
                .collect(),
            base,
            child: None,
        };
        c.restart();
        c
    }

    /// Stops every replica (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    /// Starts the replicas (again, on their data) and waits until each is ready.
    pub fn restart(&mut self) {
        let mut child = Command::new(bin("chain-server"))
            .arg("dev-cluster")
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--base-port", &self.base.to_string(), "--partitions", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The replicas share its stdout (their lines and its own come in any order): drain it.
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        // Owned from here on, so that a failed wait below still stops the cluster.
        self.child = Some(child);
        // Ready: every replica's partitions have a leader.
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 1..=3u16 {
            while !http_get(&format!("127.0.0.1:{}", self.base + 10 * i + 2), "/health")
                .contains(" 200 ")
            {
                assert!(Instant::now() < deadline, "replica {i} never became ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs/ca.pem")
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A GET over plain HTTP; the status line and body, or "" when nothing answers.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The plugin process.
pub struct Plugin {
    pub socket: PathBuf,
    pub metrics: String,
    pub state: PathBuf,
    child: Option<Child>,
}

impl Plugin {
    /// Starts `atefs-csi` with its socket and state under `dir`; returns once it serves.
    pub fn start(dir: &Path, node: &str, cluster: Option<&DevCluster>) -> Plugin {
        Self::start_with(dir, node, cluster, &[])
    }

    /// As [`Plugin::start`], with more arguments.
    pub fn start_with(
        dir: &Path,
        node: &str,
        cluster: Option<&DevCluster>,
        extra: &[&std::ffi::OsStr],
    ) -> Plugin {
        Self::launch(dir, node, cluster, extra, false)
    }

    /// As [`Plugin::start_with`], in a PID namespace of its own, as in a container: when the
    /// plugin dies, the kernel kills every process it started (see [`contained`]).
    pub fn start_contained(
        dir: &Path,
        node: &str,
        cluster: Option<&DevCluster>,
        extra: &[&std::ffi::OsStr],
    ) -> Plugin {
        Self::launch(dir, node, cluster, extra, true)
    }

    fn launch(
        dir: &Path,
        node: &str,
        cluster: Option<&DevCluster>,
        extra: &[&std::ffi::OsStr],
        in_container: bool,
    ) -> Plugin {
        let socket = dir.join(format!("{node}.sock"));
        let state = dir.join(format!("{node}-state"));
        let metrics = format!("127.0.0.1:{}", ports(1));
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_atefs-csi"));
        let mut cmd = if in_container {
            contained(&bin)
        } else {
            Command::new(&bin)
        };
        cmd.arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .args(["--node-id", node, "--metrics", &metrics])
            .arg("--state-dir")
            .arg(&state)
            .args(["--mount-timeout", "60", "--unmount-timeout", "60"]);
        if let Some(c) = cluster {
            cmd.arg("--servers")
                .arg(c.servers.join(","))
                .arg("--ca")
                .arg(c.ca());
        }
        let mut child = cmd.args(extra).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "atefs-csi said {line:?}");
        Plugin {
            socket,
            metrics,
            state,
            child: Some(child),
        }
    }

    /// SIGKILL: what a crash or an OOM kill does.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> Csi {
        let path = self.socket.clone();
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        Csi {
            identity: pb::identity_client::IdentityClient::new(channel.clone()),
            controller: pb::controller_client::ControllerClient::new(channel.clone()),
            node: pb::node_client::NodeClient::new(channel),
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }
}

/// A command running `bin` as the first process of a new PID namespace (`unshare --pid
/// --fork --kill-child`): killing the returned child kills `bin`, and with it, as in a
/// container, every process in the namespace. The mount namespace is shared.
pub fn contained(bin: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--"])
        .arg(bin)
        .process_group(0);
    cmd
}

/// True once nothing accepts connections on `socket` (its server is gone).
pub fn socket_dead(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_err()
}

/// `atefs-node-agent` in a PID namespace of its own (its container), socket and metrics
/// address of its own.
pub struct Agent {
    pub socket: PathBuf,
    pub metrics: String,
    child: Option<Child>,
}

impl Agent {
    pub fn start(dir: &Path) -> Agent {
        Self::start_with(&dir.join("agent.sock"), &[])
    }

    /// An agent serving on `socket`, with more arguments.
    pub fn start_with(socket: &Path, args: &[&std::ffi::OsStr]) -> Agent {
        let socket = socket.to_path_buf();
        let metrics = format!("127.0.0.1:{}", ports(1));
        let mut child = contained(&bin("atefs-node-agent"))
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--atefs")
            .arg(bin("atefs"))
            .args(["--metrics", &metrics])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "atefs-node-agent said {line:?}");
        Agent {
            socket,
            metrics,
            child: Some(child),
        }
    }

    /// SIGKILL of its first process: the kernel kills everything in its PID namespace, as
    /// when its container goes.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `--node-agent` for a plugin using this agent.
    pub fn endpoint(&self) -> std::ffi::OsString {
        format!("unix://{}", self.socket.display()).into()
    }

    /// The value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> u64 {
        let text = http_get(&self.metrics, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }
}

pub struct Csi {
    pub identity: pb::identity_client::IdentityClient<Channel>,
    pub controller: pb::controller_client::ControllerClient<Channel>,
    pub node: pb::node_client::NodeClient<Channel>,
}

/// A mount capability of the given access mode.
pub fn capability(mode: pb::volume_capability::access_mode::Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode.into() }),
    }
}

/// A new volume's keys: (volume id, node-stage secrets).
pub fn new_volume() -> (String, std::collections::HashMap<String, String>) {
    let k = ate::KeyFile::generate(ate::ChainId::random());
    (
        k.chain.to_hex(),
        std::collections::HashMap::from([(
            csi_driver::volume_id::KEY_ENVELOPE.to_string(),
            csi_driver::volume_id::envelope_to_hex(&k).to_string(),
        )]),
    )
}

/// Unmounts whatever is left under `dir` (a failed test's mounts), deepest first.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let Ok(all) = csi_driver::mountinfo::read() else {
            return;
        };
        for m in all
            .iter()
            .rev()
            .filter(|m| m.mount_point.starts_with(&self.0))
        {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&m.mount_point)
                .status();
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn stage_req(
    id: &str,
    dir: &Path,
    secrets: &HashMap<String, String>,
    mode: Mode,
) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: dir.display().to_string(),
        volume_capability: Some(capability(mode)),
        secrets: secrets.clone(),
        ..Default::default()
    }
}

pub fn publish_req(
    id: &str,
    staging: &Path,
    target: &Path,
    readonly: bool,
) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability(Mode::MultiNodeMultiWriter)),
        readonly,
        ..Default::default()
    }
}

pub fn unpublish_req(id: &str, target: &Path) -> pb::NodeUnpublishVolumeRequest {
    pb::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    }
}

pub fn unstage_req(id: &str, staging: &Path) -> pb::NodeUnstageVolumeRequest {
    pb::NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
    }
}

impl Csi {
    pub async fn stage(
        &mut self,
        id: &str,
        dir: &Path,
        secrets: &HashMap<String, String>,
        mode: Mode,
    ) -> Result<(), Status> {
        self.node
            .node_stage_volume(stage_req(id, dir, secrets, mode))
            .await
            .map(|_| ())
    }

    pub async fn publish(
        &mut self,
        id: &str,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), Status> {
        self.node
            .node_publish_volume(publish_req(id, staging, target, readonly))
            .await
            .map(|_| ())
    }

    pub async fn unpublish(&mut self, id: &str, target: &Path) -> Result<(), Status> {
        self.node
            .node_unpublish_volume(unpublish_req(id, target))
            .await
            .map(|_| ())
    }

    pub async fn unstage(&mut self, id: &str, staging: &Path) -> Result<(), Status> {
        self.node
            .node_unstage_volume(unstage_req(id, staging))
            .await
            .map(|_| ())
    }

    pub async fn stats(
        &mut self,
        id: &str,
        path: &Path,
    ) -> Result<pb::NodeGetVolumeStatsResponse, Status> {
        self.node
            .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: path.display().to_string(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// What every mount test starts with: a cluster, a temp dir, and the guard that unmounts what a
/// failed test left there (dropped in this order: guard, dir, cluster). None when mounts are
/// impossible here.
pub struct MountEnv {
    pub guard: MountGuard,
    pub tmp: tempfile::TempDir,
    pub cluster: DevCluster,
}

impl MountEnv {
    pub fn start() -> Option<MountEnv> {
        if !can_mount() {
            return None;
        }
        let cluster = DevCluster::start();
        let tmp = tempfile::tempdir().unwrap();
        Some(MountEnv {
            guard: MountGuard(tmp.path().to_path_buf()),
            tmp,
            cluster,
        })
    }
}
