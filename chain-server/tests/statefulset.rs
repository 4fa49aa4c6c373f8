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
            .args(["--forget-after-secs", "2"])
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

    /// Pod `i`'s answer to a GET of `path` on its metrics listener (empty when it cannot be
    /// reached).
    fn get(&self, i: usize, path: &str) -> String {
        let Ok(mut s) = std::net::TcpStream::connect(&self.metrics[i]) else {
            return String::new();
        };
        let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn ready(&self, i: usize) -> bool {
        self.get(i, "/health").starts_with("HTTP/1.1 200")
    }

    /// Waits until each of `pods` counts `n` voters in both partitions.
    fn wait_voters(&self, pods: &[usize], n: usize) {
        for &i in pods {
            for p in 0..2 {
                self.wait_metric(i, &format!("atefs_raft_voters{{partition=\"{p}\"}} {n}"));
            }
        }
    }

    /// Waits until pod `i`'s `/metrics` has the line `line`.
    fn wait_metric(&self, i: usize, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.get(i, "/metrics");
            if out.lines().any(|l| l == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod {i} never said {line}:\n{out}"
            );
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
    // pod starts with the longer list while the old ones still run with theirs (a StatefulSet
    // restarts them only once the new pod is ready). It asks to join, catches up as a learner
    // and becomes a voter of every partition: ready.
    pods.start(1);
    pods.wait_ready(1);
    pods.peers
        .push(format!("4=localhost:{},localhost:{}", base + 10, base + 9));
    pods.metrics.push(format!("127.0.0.1:{}", base + 11));
    pods.children.push(None);
    pods.start(3);
    pods.wait_ready(3);
    pods.wait_voters(&[0, 1, 2, 3], 4);
    // It serves clients that know only it.
    let only_new = ate::remote::RemoteClient::new(ate::remote::RemoteOptions {
        endpoints: vec![format!("localhost:{}", base + 9)],
        ca_pem: None,
        deadline: Duration::from_secs(20),
    })
    .unwrap();
    assert!(rt.block_on(only_new.barrier(chain3)).unwrap() >= 1);

    // Scaled down again: the new pod goes. The others' lists never named it, so once the
    // leaders have not heard from it for --forget-after-secs they remove it: three voters
    // again, of which two are a quorum. (With four voters two would not be, and the commit
    // below would fail for want of a quorum.)
    pods.stop(3);
    pods.wait_voters(&[0, 1, 2], 3);
    pods.stop(1);
    let (chain4, _o4, g4) = common::new_chain();
    rt.block_on(client.create(chain4, 1 << 20, g4)).unwrap();

    // Back with its data and its list naming it: it still holds the membership it knew, in
    // which it is a voter, but no leader calls on it; it asks, joins again and catches up.
    pods.start(3);
    pods.wait_ready(3);
    pods.wait_voters(&[0, 2, 3], 4);
    assert!(rt.block_on(only_new.barrier(chain4)).unwrap() >= 1);

    // The rolling update gives every pod the list of four.
    for i in 0..3 {
        pods.stop(i);
        pods.start(i);
        pods.wait_ready(i);
    }
    // Scaling down now (`kubectl scale`, then the lists): every list still names the pod that
    // goes, so nobody asks to forget it; `chain-server forget` does, and waits until it is
    // out of every partition.
    pods.wait_voters(&[0, 1, 2, 3], 4);
    pods.stop(3);
    let out = Command::new(env!("CARGO_BIN_EXE_chain-server"))
        .args([
            "forget",
            "4",
            "--insecure-plaintext",
            "--timeout-secs",
            "60",
        ])
        .args(["--server", &format!("localhost:{}", base + 1)])
        .args(["--server", &format!("localhost:{}", base + 4)])
        .args(["--server", &format!("localhost:{}", base + 7)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("replica 4 is a member of none of the 2 partitions"),
        "{said}"
    );
    pods.wait_voters(&[0, 1, 2], 3);
    pods.stop(2);
    let (chain5, _o5, g5) = common::new_chain();
    rt.block_on(client.create(chain5, 1 << 20, g5)).unwrap();
}
