//! `/metrics` (Prometheus text format) and `/health` on a small HTTP listener of their own.
//! Per partition: commit latency histogram, Raft term, leader, commit and applied index, and
//! bytes stored; the time of each Raft log append, and of each replication round trip per
//! follower (where a write's time goes: the disk, or the transfer to the followers).

use crate::node::Node;
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Durations in [`BUCKETS`] (cumulative, as Prometheus wants them).
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    /// Writes the series of `name` with `labels` (`key="value",...`).
    fn write(&self, o: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{b}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(o, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(o, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Per follower (node id), the round trips of replication requests that carried entries.
pub type PeerTimings = Arc<Mutex<std::collections::BTreeMap<u64, Histogram>>>;

/// Counters the API updates.
#[derive(Debug, Default)]
pub struct Metrics {
    latency: Mutex<std::collections::BTreeMap<u32, Histogram>>,
}

impl Metrics {
    /// Records one acknowledged commit.
    pub fn commit_latency(&self, partition: u32, d: Duration) {
        self.latency.lock().entry(partition).or_default().observe(d);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, node: &Node) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP atefs_commit_seconds Time from a commit request to its acknowledgement."
        );
        let _ = writeln!(o, "# TYPE atefs_commit_seconds histogram");
        for (p, h) in self.latency.lock().iter() {
            h.write(
                &mut o,
                "atefs_commit_seconds",
                &format!("partition=\"{p}\""),
            );
        }
        let _ = writeln!(
            o,
            "# HELP atefs_raft_append_seconds Time to write and fdatasync one append to the partition's Raft log."
        );
        let _ = writeln!(o, "# TYPE atefs_raft_append_seconds histogram");
        for p in &node.partitions {
            let h = p.log.append_seconds();
            h.write(
                &mut o,
                "atefs_raft_append_seconds",
                &format!("partition=\"{}\"", p.id),
            );
        }
        let _ = writeln!(
            o,
            "# HELP atefs_raft_replicate_seconds Round trip of one replication request carrying entries, leader to follower: transfer, the follower's append, the answer."
        );
        let _ = writeln!(o, "# TYPE atefs_raft_replicate_seconds histogram");
        for p in &node.partitions {
            for (peer, h) in p.replication.lock().iter() {
                let labels = format!("partition=\"{}\",peer=\"{peer}\"", p.id);
                h.write(&mut o, "atefs_raft_replicate_seconds", &labels);
            }
        }
        let staged: Vec<(u32, [u64; 4])> = node
            .partitions
            .iter()
            .map(|p| {
                let s = p.staged.lock();
                let fed = |i: usize| p.fed[i].load(std::sync::atomic::Ordering::Relaxed);
                (p.id, [s.used, s.missing, fed(0), fed(1)])
            })
            .collect();
        let counters = [
            (
                "atefs_raft_staged_entries_total",
                "Entries a replication request named instead of carrying, because its leader had sent them ahead.",
            ),
            (
                "atefs_raft_staged_missing_total",
                "Replication requests that named an entry this replica no longer held (sent again in full).",
            ),
            (
                "atefs_subscribe_sent_full_total",
                "Transactions sent to subscribers in full.",
            ),
            (
                "atefs_subscribe_sent_own_total",
                "Transactions sent to subscribers by hash only, because the subscriber's own writer session committed them (it holds their bytes).",
            ),
        ];
        for (i, (name, help)) in counters.iter().enumerate() {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} counter");
            for (p, vals) in &staged {
                let _ = writeln!(o, "{name}{{partition=\"{p}\"}} {}", vals[i]);
            }
        }
        let gauges: [(&str, &str); 11] = [
            ("atefs_raft_term", "Current Raft term."),
            (
                "atefs_raft_leader",
                "Node id of the partition's leader (0: none known).",
            ),
            (
                "atefs_raft_is_leader",
                "1 when this node leads the partition.",
            ),
            (
                "atefs_raft_last_log_index",
                "Last index in the partition's log.",
            ),
            ("atefs_raft_applied_index", "Last log index applied."),
            (
                "atefs_stored_bytes",
                "Bytes of the partition's log on disk.",
            ),
            (
                "atefs_raft_stopped",
                "1 when the partition's Raft core stopped on a storage error (a full or failing disk): restart the replica once the disk has room.",
            ),
            (
                "atefs_raft_voters",
                "Voters of the partition, as this replica knows its membership.",
            ),
            (
                "atefs_raft_learners",
                "Learners of the partition: replicas that asked to join and are catching up.",
            ),
            (
                "atefs_records",
                "Records of the partition's chains (a file is two or more: its entry, its inode, its blocks; deleted ones count until a snapshot drops them). Each is held in memory: about 200 bytes of heap, 400 of a replica's resident set (docs/operations.md, sizing the chain servers' memory).",
            ),
            (
                "atefs_subscriptions",
                "Subscriptions this replica serves for the partition's chains (a mounted volume holds one, at its partition's leader).",
            ),
        ];
        let rows: Vec<(u32, [u64; 11])> = node
            .partitions
            .iter()
            .map(|p| {
                let m = p.raft.metrics().borrow().clone();
                let leader = crate::node::known_leader(&m).unwrap_or(0);
                let membership = m.membership_config.membership();
                let voters = membership.voter_ids().count() as u64;
                let learners = membership.learner_ids().count() as u64;
                (
                    p.id,
                    [
                        m.current_term,
                        leader,
                        u64::from(leader == node.config.id),
                        m.last_log_index.unwrap_or(0),
                        m.last_applied.map_or(0, |l| l.index),
                        p.log.bytes(),
                        u64::from(m.running_state.is_err()),
                        voters,
                        learners,
                        p.sm.records(),
                        p.subscribers.total(),
                    ],
                )
            })
            .collect();
        for (i, (name, help)) in gauges.iter().enumerate() {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} gauge");
            for (p, vals) in &rows {
                let _ = writeln!(o, "{name}{{partition=\"{p}\"}} {}", vals[i]);
            }
        }
        if let Ok(free) = crate::disk::free_bytes(&node.config.data) {
            let name = "atefs_disk_free_bytes";
            let _ = writeln!(
                o,
                "# HELP {name} Free space of the data directory's file system, for this process (leaders refuse growing commits below --disk-reserve-bytes)."
            );
            let _ = writeln!(o, "# TYPE {name} gauge");
            let _ = writeln!(o, "{name} {free}");
        }
        let name = "atefs_peer_disk_free_bytes";
        let _ = writeln!(
            o,
            "# HELP {name} Free space each peer last reported on its data disk (in its answers to this replica's Raft requests); a leader refuses growing commits when the fullest, heard from in the last 5 s, is below --disk-reserve-bytes."
        );
        let _ = writeln!(o, "# TYPE {name} gauge");
        for (peer, free) in node.peer_room.reports(crate::disk::FRESH) {
            let _ = writeln!(o, "{name}{{peer=\"{peer}\"}} {free}");
        }
        o
    }
}

/// Serves `/metrics`, `/health` (200 once every partition has a leader, else 503) and
/// `/live` (503 once a partition's Raft core has stopped, so that the replica is restarted)
/// until the listener fails.
pub async fn serve(listener: TcpListener, node: Arc<Node>, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let node = node.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // The request head, however many reads it takes (bounded).
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render(&node)),
                "/health" | "/ready" => match node.not_ready() {
                    None => ("200 OK", "ready\n".to_string()),
                    // A stopped partition's reason says more than its missing leader.
                    Some(why) => (
                        "503 Service Unavailable",
                        format!("not ready: {}\n", node.live().err().unwrap_or(why)),
                    ),
                },
                "/live" => match node.live() {
                    Ok(()) => ("200 OK", "live\n".to_string()),
                    Err(e) => ("503 Service Unavailable", format!("{e}\n")),
                },
                _ => ("404 Not Found", "try /metrics or /health\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
