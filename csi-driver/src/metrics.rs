//! `/metrics` (Prometheus text) and `/health` of the plugin: calls by method and status code,
//! their total time, and the atefs mounts the node has.

use crate::mountinfo;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Calls and seconds, by (method, status code).
type CallCounts = BTreeMap<(&'static str, &'static str), (u64, f64)>;

/// Counters of the CSI calls served.
#[derive(Debug, Default)]
pub struct Metrics {
    calls: Mutex<CallCounts>,
    daemon_failures: std::sync::atomic::AtomicU64,
    orphans: std::sync::atomic::AtomicU64,
    /// Volumes in trouble at the last status check, by reason (crate::status).
    problems: Mutex<BTreeMap<&'static str, u64>>,
    /// Copies (clones, snapshots) running now.
    copies: std::sync::atomic::AtomicU64,
    /// Plaintext bytes the finished copies copied.
    copied: std::sync::atomic::AtomicU64,
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Metrics {
    /// Counts one call of `method` that ended with `code` after `took`.
    pub fn record(&self, method: &'static str, code: tonic::Code, took: Duration) {
        let mut c = self.calls.lock();
        let e = c.entry((method, code_name(code))).or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    /// Counts a mount daemon that ended badly.
    pub fn daemon_failed(&self) {
        self.daemon_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts orphaned volumes collected.
    pub fn orphans_collected(&self, n: u64) {
        self.orphans
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A copy (clone, snapshot) began.
    pub fn copy_started(&self) {
        self.copies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A copy ended, having copied `bytes` (0 if it failed).
    pub fn copy_ended(&self, bytes: u64) {
        self.copies
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.copied
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// What the last status check found.
    pub fn set_problems(&self, findings: &[crate::status::Finding]) {
        let mut p = self.problems.lock();
        for r in crate::status::REASONS {
            p.insert(r, 0);
        }
        for f in findings {
            *p.entry(f.problem.reason()).or_default() += 1;
        }
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str("# HELP atefs_csi_calls_total CSI calls served, by method and gRPC status.\n# TYPE atefs_csi_calls_total counter\n");
        let calls = self.calls.lock().clone();
        for ((m, c), (n, _)) in &calls {
            let _ = writeln!(
                o,
                "atefs_csi_calls_total{{method=\"{m}\",code=\"{c}\"}} {n}"
            );
        }
        o.push_str("# HELP atefs_csi_call_seconds_total Time spent in CSI calls, by method and gRPC status.\n# TYPE atefs_csi_call_seconds_total counter\n");
        for ((m, c), (_, s)) in &calls {
            let _ = writeln!(
                o,
                "atefs_csi_call_seconds_total{{method=\"{m}\",code=\"{c}\"}} {s}"
            );
        }
        let _ = writeln!(o, "# HELP atefs_csi_daemon_failures_total Mount daemons that died or failed to commit at unmount.\n# TYPE atefs_csi_daemon_failures_total counter\natefs_csi_daemon_failures_total {}", self.daemon_failures.load(std::sync::atomic::Ordering::Relaxed));
        let _ = writeln!(o, "# HELP atefs_csi_orphans_collected_total Volumes deleted because their PersistentVolume was gone.\n# TYPE atefs_csi_orphans_collected_total counter\natefs_csi_orphans_collected_total {}", self.orphans.load(std::sync::atomic::Ordering::Relaxed));
        let _ = writeln!(o, "# HELP atefs_csi_copies_running Volume copies (clones, snapshots) running now.\n# TYPE atefs_csi_copies_running gauge\natefs_csi_copies_running {}", self.copies.load(std::sync::atomic::Ordering::Relaxed));
        let _ = writeln!(o, "# HELP atefs_csi_copied_bytes_total Bytes of file system data the finished copies copied.\n# TYPE atefs_csi_copied_bytes_total counter\natefs_csi_copied_bytes_total {}", self.copied.load(std::sync::atomic::Ordering::Relaxed));
        let problems = self.problems.lock().clone();
        if !problems.is_empty() {
            o.push_str("# HELP atefs_csi_volume_problems Volumes in trouble at the last status check, by reason.\n# TYPE atefs_csi_volume_problems gauge\n");
            for (r, n) in &problems {
                let _ = writeln!(o, "atefs_csi_volume_problems{{reason=\"{r}\"}} {n}");
            }
        }
        let mounts = mountinfo::read()
            .map(|all| all.iter().filter(|m| mountinfo::is_atefs(m)).count())
            .unwrap_or(0);
        let _ = writeln!(o, "# HELP atefs_csi_mounts atefs mounts on this node (staged and published).\n# TYPE atefs_csi_mounts gauge\natefs_csi_mounts {mounts}");
        o
    }
}

/// Runs one call: counted, timed, and its failure logged (requests are not: they carry
/// secrets).
pub async fn observe<T>(
    metrics: &Metrics,
    method: &'static str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let start = std::time::Instant::now();
    let r = call.await;
    let code = r
        .as_ref()
        .err()
        .map_or(tonic::Code::Ok, tonic::Status::code);
    metrics.record(method, code, start.elapsed());
    if let Err(s) = &r {
        tracing::warn!(method, code = ?s.code(), message = s.message(), "call failed");
    }
    r.map(tonic::Response::new)
}

/// Serves `/metrics`, `/health` and `/live` until the listener fails.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    node_agent::http::serve(listener, Arc::new(move || metrics.render())).await
}
