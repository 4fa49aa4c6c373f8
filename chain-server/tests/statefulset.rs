//! Replicas started as a StatefulSet starts them: the same arguments for every pod, peers named
//! by host name (here `localhost`), the id taken from the pod's host name (`NAME-0` is replica
//! one) and `--bootstrap-first`, which starts a new cluster once: on the lowest replica, on
//! its first start only.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Pods {
    children: Vec<Option<Child>>,
    metrics: Vec<String>,
    dir: tempfile::TempDir,
    peers: Vec<String>,
}

impl Pods {
    fn start(&mut self, i: usize) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chain-server"));
        cmd.arg("run")
            .arg("--id-from-hostname")
            .env("HOSTNAME", format!("atefs-chain-server-{i}"))
            .arg("--data")
            .arg(self.dir.path().join(format!("data-{i}")))
            .args([
                "--partitions",
                "2",
                "--insecure-plaintext",
                "--bootstrap-first",
            ])
            .args(["--heartbeat-ms", "150", "--metrics", &self.metrics[i]])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for p in &self.peers {
            cmd.args(["--peer", p]);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("serving"), "pod {i} said {line:?}");
        self.children[i] = Some(child);
    }

    fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pod `i`'s answer to `/health` (empty when it cannot be reached).
    fn health(&self, i: usize) -> String {
        let Ok(mut s) = std::net::TcpStream::connect(&self.metrics[i]) else {
            return String::new();
        };
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn ready(&self, i: usize) -> bool {
        self.health(i).starts_with("HTTP/1.1 200")
    }

    /// Waits until pod `i`'s `/health` says `what`.
    fn wait_health(&self, i: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.health(i);
            if out.contains(what) {
                return;
            }
            assert!(Instant::now() < deadline, "pod {i}: {out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready(i) {
            assert!(Instant::now() < deadline, "pod {i} never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.stop(i);
        }
    }
}

#[test]
fn identical_pods_named_by_host_name_form_one_cluster_once() {
    let base = common::ports(12);
    let peers = (0..3u16)
        .map(|i| {
            format!(
                "{}=localhost:{},localhost:{}",
                i + 1,
                base + 3 * i + 1,
                base + 3 * i
            )
        })
        .collect();
    let mut pods = Pods {
        children: (0..3).map(|_| None).collect(),
        metrics: (0..3u16)
            .map(|i| format!("127.0.0.1:{}", base + 3 * i + 2))
            .collect(),
        dir: tempfile::tempdir().unwrap(),
        peers,
    };
    for i in 0..3 {
        pods.start(i);
    }
    // Ready means every partition has a leader: someone bootstrapped, over peers named by DNS.
    for i in 0..3 {
        pods.wait_ready(i);
    }
    // Pod 0 restarts with its data: it rejoins (no second bootstrap) and the cluster serves.
    pods.stop(0);
    pods.start(0);
    for i in 0..3 {
        pods.wait_ready(i);
    }
    // A client reaches the cluster by host name too.
    let rt = common::rt();
    let client = ate::remote::RemoteClient::new(ate::remote::RemoteOptions {
        endpoints: vec![format!("localhost:{base}")],
        ca_pem: None,
        deadline: Duration::from_secs(20),
    })
    .unwrap();
    let (chain, _owner, genesis) = common::new_chain();
    rt.block_on(client.create(chain, 1 << 20, genesis)).unwrap();
    let index = rt.block_on(client.barrier(chain)).unwrap();
    assert!(index >= 1);

    // Pod 0 loses its volume: with --bootstrap-first it starts "fresh" again.
    pods.stop(0);
    std::fs::remove_dir_all(pods.dir.path().join("data-0")).unwrap();
    pods.start(0);
    for i in 0..3 {
        pods.wait_ready(i);
    }
    assert!(
        rt.block_on(client.barrier(chain)).unwrap() >= index,
        "the chain survives"
    );
    let (chain2, _owner2, genesis2) = common::new_chain();
    rt.block_on(client.create(chain2, 1 << 20, genesis2))
        .unwrap();
    // And pod 0 alone with one other still commits (it holds the log again).
    pods.stop(1);
    let (chain3, _o3, g3) = common::new_chain();
    rt.block_on(client.create(chain3, 1 << 20, g3)).unwrap();
    assert!(rt.block_on(client.barrier(chain)).unwrap() >= index);

    // Scaled up after the first start (`helm upgrade --set chainServer.replicas=4`): the new
    // pod is never made a member, and says why instead of only "not ready".
    pods.peers
        .push(format!("4=localhost:{},localhost:{}", base + 10, base + 9));
    pods.metrics.push(format!("127.0.0.1:{}", base + 11));
    pods.children.push(None);
    pods.start(3);
    pods.wait_health(3, "has no members here yet");
    // Given a member's data (a copied volume), it knows it is not among them.
    pods.stop(3);
    let (from, to) = (
        pods.dir.path().join("data-2"),
        pods.dir.path().join("data-3"),
    );
    std::fs::remove_dir_all(&to).unwrap();
    let copied = Command::new("cp").arg("-a").arg(&from).arg(&to).status();
    assert!(copied.unwrap().success());
    pods.start(3);
    pods.wait_health(3, "this replica (id 4) is not a member of partition");
    assert!(pods.health(3).starts_with("HTTP/1.1 503"));
}
