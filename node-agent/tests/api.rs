//! The agent binary over its socket: bad requests are refused with the reason and start
//! nothing, a daemon that cannot mount is reported with its log, waiting for an unknown daemon
//! says so, and `/metrics` and `/health` answer. (Mounts through the agent, and its reason to
//! exist, are tested with the CSI plugin: csi-driver/tests/node_agent.rs.)
#![allow(clippy::unwrap_used)]

use node_agent::client::AgentClient;
use node_agent::daemon::{DaemonError, MountSpec};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Agent {
    child: Child,
    socket: PathBuf,
    metrics: String,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = listener.local_addr().unwrap().to_string();
        drop(listener);
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_atefs-node-agent"));
        let mut child = Command::new(&bin)
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--atefs")
            .arg(bin.with_file_name("atefs"))
            .args(["--metrics", &metrics])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "the agent said {line:?}");
        Agent {
            child,
            socket,
            metrics,
        }
    }

    fn get(&self, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(&self.metrics).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(dir: &Path) -> MountSpec {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    MountSpec {
        dir: mnt,
        cache: dir.join("cache"),
        keys: dir.join("no-such-keys"),
        servers: vec!["127.0.0.1:9".into()],
        ca: None,
        insecure_plaintext: true,
        exclusive: false,
        quota: None,
        call_timeout_secs: None,
        log: dir.join("mount.log"),
        pid_file: dir.join("pid"),
    }
}

fn refused(r: Result<u32, DaemonError>) -> String {
    match r {
        Err(DaemonError::Agent(m)) => m,
        other => panic!("not refused by the agent: {other:?}"),
    }
}

#[test]
fn bad_requests_and_failed_mounts_are_reported_and_leave_nothing_running() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async { AgentClient::new(agent.socket.clone()).unwrap() });
    let limit = Duration::from_secs(30);
    rt.block_on(async {
        let mut s = spec(tmp.path());
        s.dir = PathBuf::from("relative/mnt");
        let m = refused(client.start(&s, limit).await);
        assert!(m.contains("dir must be an absolute path"), "{m}");

        let mut s = spec(tmp.path());
        s.servers.clear();
        let m = refused(client.start(&s, limit).await);
        assert!(m.contains("servers is required"), "{m}");

        let mut s = spec(tmp.path());
        s.insecure_plaintext = false;
        let m = refused(client.start(&s, limit).await);
        assert!(m.contains("a CA is required"), "{m}");

        let m = refused(client.start(&spec(tmp.path()), Duration::ZERO).await);
        assert!(m.contains("timeout_ms is required"), "{m}");

        // Well formed, but the key envelope does not exist: the daemon fails before it
        // mounts, and the agent answers with the end of its log.
        let m = refused(client.start(&spec(tmp.path()), limit).await);
        assert!(m.contains("no-such-keys"), "{m}");
        assert!(!tmp.path().join("pid").exists(), "a pid file for no daemon");

        // Nothing to wait for: not known.
        let exit = client
            .wait_exit(
                &tmp.path().join("pid"),
                &tmp.path().join("mnt"),
                &tmp.path().join("mount.log"),
                limit,
            )
            .await
            .unwrap();
        assert_eq!(exit, None);
    });
    assert!(agent.get("/health").starts_with("HTTP/1.1 200"));
    let metrics = agent.get("/metrics");
    for want in [
        "atefs_node_agent_mount_failures_total 1",
        "atefs_node_agent_mounts_total 0",
        "atefs_node_agent_daemons 0",
    ] {
        assert!(metrics.contains(want), "no {want:?} in:\n{metrics}");
    }
}
