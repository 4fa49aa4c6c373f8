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

    fn ready(&self, i: usize) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(&self.metrics[i]) else {
            return false;
        };
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
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
    let base = common::ports(9);
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
}
