//! `/metrics` (Prometheus text format) and `/health` on a small HTTP listener of their own.
//! Per partition: commit latency histogram, Raft term, leader, commit and applied index, and
//! bytes stored.

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

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters the API updates.
#[derive(Debug, Default)]
pub struct Metrics {
    latency: Mutex<std::collections::BTreeMap<u32, Histogram>>,
}

impl Metrics {
    /// Records one acknowledged commit.
    pub fn commit_latency(&self, partition: u32, d: Duration) {
        let s = d.as_secs_f64();
        let mut map = self.latency.lock();
        let h = map.entry(partition).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
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
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "atefs_commit_seconds_bucket{{partition=\"{p}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "atefs_commit_seconds_bucket{{partition=\"{p}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(o, "atefs_commit_seconds_sum{{partition=\"{p}\"}} {}", h.sum);
            let _ = writeln!(
                o,
                "atefs_commit_seconds_count{{partition=\"{p}\"}} {}",
                h.count
            );
        }
        let gauges: [(&str, &str); 6] = [
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
        ];
        let rows: Vec<(u32, [u64; 6])> = node
            .partitions
            .iter()
            .map(|p| {
                let m = p.raft.metrics().borrow().clone();
                let leader = m.current_leader.unwrap_or(0);
                (
                    p.id,
                    [
                        m.current_term,
                        leader,
                        u64::from(leader == node.config.id),
                        m.last_log_index.unwrap_or(0),
                        m.last_applied.map_or(0, |l| l.index),
                        p.log.bytes(),
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
        o
    }
}

/// Serves `/metrics`, `/health` (200 once every partition has a leader, else 503) and
/// `/live` until the listener fails.
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
                "/health" | "/ready" if node.ready() => ("200 OK", "ready\n".to_string()),
                "/health" | "/ready" => (
                    "503 Service Unavailable",
                    "not ready: a partition has no leader\n".to_string(),
                ),
                "/live" => ("200 OK", "live\n".to_string()),
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
