//! A real three-process cluster on loopback for tests: each replica is the chain-server binary,
//! started with its own data directory and ports; everything is killed and removed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use ate::remote::{RemoteClient, RemoteOptions};
use ate::{
    ChainId, DataKey, Op, RecordKey, RootAuthority, SigningKey, Transaction, WriteAuthority,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

pub mod mount;

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Ports no other test in this process uses (the process id spreads test binaries apart).
/// All below Linux's ephemeral range (32768 on): a replica's listener once found its port
/// taken by an outgoing connection's (AddrInUse).
pub fn ports(n: u16) -> u16 {
    let base = 20_000 + (std::process::id() % 127) as u16 * 100;
    base + NEXT_PORT.fetch_add(n, Ordering::SeqCst)
}

/// A runtime for the async client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One replica.
pub struct Replica {
    pub id: u64,
    /// Source address of its connections to peers (so that a firewall rule can cut it off).
    pub source: String,
    pub api: String,
    pub raft: String,
    pub metrics: String,
    pub data: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Replica number `i` (from 0; its id is one more), its data under `dir`, its API,
    /// Raft and metrics listeners on ports `base`, `base + 1`, `base + 2`.
    fn at(dir: &Path, i: u16, base: u16) -> Replica {
        Replica {
            id: u64::from(i) + 1,
            source: format!("127.1.{}.{}", std::process::id() % 250, i + 1),
            api: format!("127.0.0.1:{base}"),
            raft: format!("127.0.0.1:{}", base + 1),
            metrics: format!("127.0.0.1:{}", base + 2),
            data: dir.join(format!("node-{}", i + 1)),
            child: None,
        }
    }
}

/// Three replicas.
pub struct Cluster {
    /// Each replica's own small disk, when asked for (unmounted before `dir` is removed).
    pub disks: Vec<Tmpfs>,
    pub dir: tempfile::TempDir,
    pub replicas: Vec<Replica>,
    pub tls: bool,
    peers: Vec<String>,
    snapshot_every: u64,
    /// More arguments for every replica.
    extra: Vec<String>,
}

impl Cluster {
    /// Starts three replicas (TLS when `tls`; a snapshot every `snapshot_every` entries) and
    /// waits until each is ready.
    pub fn start(tls: bool, snapshot_every: u64) -> Cluster {
        Self::start_with(tls, snapshot_every, &[])
    }

    /// As [`Cluster::start`], with more arguments for every replica.
    pub fn start_with(tls: bool, snapshot_every: u64, extra: &[&str]) -> Cluster {
        Self::start_on(tls, snapshot_every, extra, None)
    }

    /// As [`Cluster::start_with`]; with `disk`, each replica's data directory is a file
    /// system of its own of that many bytes (tmpfs).
    pub fn start_on(tls: bool, snapshot_every: u64, extra: &[&str], disk: Option<u64>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let base = ports(9);
        let replicas: Vec<Replica> = (0..3u16)
            .map(|i| Replica::at(dir.path(), i, base + 3 * i))
            .collect();
        let peers = replicas
            .iter()
            .map(|r| format!("{}={},{}", r.id, r.raft, r.api))
            .collect();
        if tls {
            let out = Command::new(env!("CARGO_BIN_EXE_chain-server"))
                .args(["certs", "--out"])
                .arg(dir.path().join("certs"))
                .output()
                .unwrap();
            assert!(out.status.success());
        }
        let disks = disk.map_or_else(Vec::new, |bytes| {
            replicas
                .iter()
                .map(|r| Tmpfs::mount(&r.data, bytes))
                .collect()
        });
        let mut c = Cluster {
            disks,
            dir,
            replicas,
            tls,
            peers,
            snapshot_every,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..3 {
            c.spawn(i, i == 0);
        }
        // Ready means every partition has a leader on every replica (a new cluster's first
        // election waits out the fresh-disk vote hold-off).
        for i in 0..3 {
            c.wait_ready(i, Duration::from_secs(30));
        }
        c
    }

    /// (Re)starts replica `i`; waits for its readiness line.
    pub fn spawn(&mut self, i: usize, bootstrap: bool) {
        let r = &self.replicas[i];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chain-server"));
        cmd.arg("run")
            .args(["--id", &r.id.to_string()])
            .arg("--data")
            .arg(&r.data)
            .args(["--partitions", "2", "--metrics", &r.metrics])
            .args(["--snapshot-every", &self.snapshot_every.to_string()])
            .args(["--heartbeat-ms", "150", "--source-ip", &r.source])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(format!("node-{}.log", r.id)))
                    .unwrap(),
            ));
        if self.tls {
            cmd.arg("--tls-dir").arg(self.dir.path().join("certs"));
        } else {
            cmd.arg("--insecure-plaintext");
        }
        for p in &self.peers {
            cmd.args(["--peer", p]);
        }
        // A replica added by `grow` names itself; the others' lists do not name it.
        if !self
            .peers
            .iter()
            .any(|p| p.starts_with(&format!("{}=", r.id)))
        {
            cmd.args(["--peer", &format!("{}={},{}", r.id, r.raft, r.api)]);
        }
        if bootstrap {
            cmd.arg("--bootstrap");
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("serving"),
            "replica {} said {line:?}",
            r.id
        );
        self.replicas[i].child = Some(child);
    }

    /// Starts one more replica, whose peer list is the others' and itself (a StatefulSet
    /// scaled up, before its older pods restart with the longer list); returns its index. It
    /// asks to join; see `wait_ready`.
    pub fn grow(&mut self) -> usize {
        let i = self.replicas.len();
        self.replicas
            .push(Replica::at(self.dir.path(), i as u16, ports(3)));
        self.spawn(i, false);
        i
    }

    /// Waits until replica `i`'s `/health` answers 200.
    pub fn wait_ready(&self, i: usize, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let (status, body) = self.http_get(i, "/health");
            if status.contains("200") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica {} not ready: {body}\n{}",
                self.replicas[i].id,
                self.log_tail(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tail of replica `i`'s log (for failure messages).
    pub fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("node-{}.log", self.replicas[i].id)),
        )
        .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The process id of replica `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.replicas[i].child.as_ref().map(|c| c.id())
    }

    /// kill -9 of replica `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.api.clone()).collect()
    }

    pub fn client(&self, deadline: Duration) -> RemoteClient {
        self.client_of(self.endpoints(), deadline)
    }

    /// A client that knows only `endpoints`.
    pub fn client_of(&self, endpoints: Vec<String>, deadline: Duration) -> RemoteClient {
        let ca_pem = self
            .tls
            .then(|| std::fs::read(self.dir.path().join("certs/ca.pem")).unwrap());
        RemoteClient::new(RemoteOptions {
            endpoints,
            ca_pem,
            deadline,
        })
        .unwrap()
    }

    /// GET of a metrics-listener path: (status line, body).
    pub fn http_get(&self, i: usize, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let once = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(&self.replicas[i].metrics)?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        let mut last = None;
        for _ in 0..2 {
            match once() {
                Ok(out) => {
                    let (head, body) = out.split_once("\r\n\r\n").unwrap();
                    return (head.lines().next().unwrap().to_string(), body.to_string());
                }
                Err(e) => last = Some(e),
            }
        }
        panic!(
            "GET {path} from replica {}: {last:?}\n{}",
            self.replicas[i].id,
            self.log_tail(i)
        );
    }

    /// A gauge of replica `i` for partition `p`.
    pub fn gauge(&self, i: usize, name: &str, p: u32) -> u64 {
        let (_, body) = self.http_get(i, "/metrics");
        let prefix = format!("{name}{{partition=\"{p}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// Waits (polling its metrics, up to `limit`) until replica `i` has applied partition
    /// `p` up to `index`; returns whether it did.
    pub fn wait_applied(&self, i: usize, p: u32, index: u64, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if self.gauge(i, "atefs_raft_applied_index", p) >= index {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Cuts replica `i` off from its peers (iptables on loopback); healed on drop of the guard.
    pub fn isolate(&self, i: usize) -> Firewall {
        let r = &self.replicas[i];
        let port = r.raft.rsplit_once(':').unwrap().1.to_string();
        let rules: Vec<Vec<String>> = vec![
            vec!["-s".into(), r.source.clone()],
            vec!["-d".into(), r.source.clone()],
            vec!["-p".into(), "tcp".into(), "--dport".into(), port.clone()],
            vec!["-p".into(), "tcp".into(), "--sport".into(), port],
        ];
        for rule in &rules {
            let st = Command::new("iptables")
                .args(["-I", "INPUT"])
                .args(rule)
                .args(["-j", "DROP"])
                .status()
                .unwrap();
            assert!(st.success(), "iptables {rule:?}");
        }
        Firewall { rules }
    }

    /// Which replica (index) leads partition `p`, per the metrics of live replicas.
    pub fn leader_of(&self, p: u32) -> Option<usize> {
        for (i, r) in self.replicas.iter().enumerate() {
            if r.child.is_none() {
                continue;
            }
            let (_, body) = self.http_get(i, "/metrics");
            let line = format!("atefs_raft_leader{{partition=\"{p}\"}} ");
            if let Some(l) = body.lines().find_map(|l| l.strip_prefix(&line)) {
                let id: u64 = l.trim().parse().unwrap();
                if id != 0 {
                    return self.replicas.iter().position(|r| r.id == id);
                }
            }
        }
        None
    }
}

/// A tmpfs of a given size mounted at a path (a small disk of its own); unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", path.display());
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Grows or shrinks it (not below what it holds).
    pub fn resize(&self, bytes: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(st.success(), "resize tmpfs at {}", self.path.display());
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(&self.path)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A process stopped with SIGSTOP (a frozen node); continued on drop, even when a test fails.
pub struct Stopped(u32);

impl Stopped {
    pub fn stop(pid: u32) -> Stopped {
        let st = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
        assert!(st.unwrap().success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// iptables rules that undo themselves.
pub struct Firewall {
    rules: Vec<Vec<String>>,
}

impl Firewall {
    /// Removes the rules.
    pub fn heal(self) {}
}

impl Drop for Firewall {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables")
                .args(["-D", "INPUT"])
                .args(rule)
                .args(["-j", "DROP"])
                .status();
        }
    }
}

/// Whether this test process can change the firewall.
pub fn have_iptables() -> bool {
    Command::new("iptables")
        .args(["-L", "INPUT", "-n"])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.replicas.len() {
            self.kill(i);
        }
    }
}

/// An owner key and a fresh chain whose genesis makes it the single owner.
pub fn new_chain() -> (ChainId, SigningKey, Vec<u8>) {
    let owner = SigningKey::generate();
    let chain = ChainId(rand::random());
    let mut tx = Transaction::new(chain, owner.public());
    tx.ops
        .push(Op::SetRoot(RootAuthority::single_owner(owner.public())));
    (chain, owner.clone(), tx.sign(&owner).encode())
}

/// A plaintext cluster holding one fresh chain (no snapshot during the test): the usual start
/// of a test of commits.
pub struct WithChain {
    pub cluster: Cluster,
    pub rt: tokio::runtime::Runtime,
    pub client: std::sync::Arc<RemoteClient>,
    pub chain: ChainId,
    pub owner: SigningKey,
    /// The chain's partition (of the cluster's two).
    pub p: u32,
    pub key: DataKey,
}

impl WithChain {
    pub fn start() -> Self {
        Self::on(Cluster::start(false, 1_000_000), 1 << 30)
    }

    /// A fresh chain with a quota of `quota` bytes on `cluster`.
    pub fn on(cluster: Cluster, quota: u64) -> Self {
        let rt = rt();
        let client = std::sync::Arc::new(cluster.client(Duration::from_secs(30)));
        let (chain, owner, genesis) = new_chain();
        rt.block_on(client.create(chain, quota, genesis)).unwrap();
        let p = chain_server::node::partition_of(&chain, 2);
        Self {
            cluster,
            rt,
            client,
            chain,
            owner,
            p,
            key: DataKey::generate(),
        }
    }
}

/// A signed transaction putting `value` (sealed) under a record named by `name`.
pub fn put_tx(
    chain: ChainId,
    owner: &SigningKey,
    key: &DataKey,
    name: &[u8],
    value: &[u8],
) -> Vec<u8> {
    let mut tx = Transaction::new(chain, owner.public());
    let rk = RecordKey(*blake3::hash(name).as_bytes().first_chunk::<16>().unwrap());
    tx.ops.push(Op::put(
        &chain,
        rk,
        None,
        WriteAuthority::Inherit,
        Some(key),
        value,
    ));
    tx.sign(owner).encode()
}

/// Files under `dir` (recursively).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// What each writer was told: (writer, sequence) -> chain index.
pub type Acks = BTreeMap<(usize, u64), u64>;

/// What a writer logged: what it was acknowledged (and when), what it sent by hash.
pub type WriterLog = (
    Vec<((usize, u64), u64)>,
    Vec<([u8; 32], (usize, u64))>,
    Vec<std::time::Instant>,
);

/// `n` writers committing to `w`'s chain until `stop`, each logging what it sent and what it
/// was acknowledged (for [`check_history`]).
pub fn spawn_writers(
    w: &WithChain,
    n: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<WriterLog>> {
    (0..n)
        .map(|i| {
            let (client, owner, key) = (w.client.clone(), w.owner.clone(), w.key.clone());
            let (chain, stop) = (w.chain, stop.clone());
            w.rt.spawn(async move {
                let (mut acks, mut sent, mut times) = (Vec::new(), Vec::new(), Vec::new());
                let mut seq = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("w{i}-{seq}");
                    let tx = put_tx(chain, &owner, &key, name.as_bytes(), name.as_bytes());
                    let hash = Transaction::decode(&tx).unwrap().hash().0;
                    sent.push((hash, (i, seq)));
                    let index = client.commit(chain, tx).await.unwrap();
                    acks.push(((i, seq), index));
                    times.push(std::time::Instant::now());
                    seq += 1;
                }
                (acks, sent, times)
            })
        })
        .collect()
}

/// The history checker: the chain, read back from index 1 through a subscription, must hold
/// every acknowledged commit exactly once, at the index its writer was told, and nothing that
/// no writer sent. Returns the number of transactions read.
pub async fn check_history(
    client: &ate::remote::RemoteClient,
    chain: ate::ChainId,
    reader: ate::SigningKey,
    acks: &Acks,
    sent: &BTreeMap<[u8; 32], (usize, u64)>,
) -> u64 {
    let last = client.barrier(chain).await.unwrap();
    let mut sub = client.subscribe(chain, 1, reader, None);
    let mut seen: BTreeMap<(usize, u64), u64> = BTreeMap::new();
    for want in 1..=last {
        let (index, bytes) = sub.next().await.unwrap();
        assert_eq!(index, want, "the subscription skipped or repeated an index");
        let tx = Transaction::decode(&bytes).unwrap();
        if index == 1 {
            continue; // genesis
        }
        let who = sent
            .get(&tx.hash().0)
            .unwrap_or_else(|| panic!("index {index} holds a transaction nobody sent"));
        assert!(
            seen.insert(*who, index).is_none(),
            "{who:?} is in the chain twice"
        );
    }
    for (who, index) in acks {
        assert_eq!(
            seen.get(who),
            Some(index),
            "acknowledged commit {who:?} is not at the index it was given"
        );
    }
    last
}
