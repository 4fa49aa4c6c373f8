//! The agent's gRPC service: mount daemons started and waited for on the plugin's behalf.

use crate::daemon::{DaemonError, Daemons, MountSpec};
use crate::pb;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    mounts: AtomicU64,
    mount_failures: AtomicU64,
    failed_exits: AtomicU64,
    taken_over: AtomicU64,
}

/// The service.
#[derive(Debug, Clone)]
pub struct AgentService {
    daemons: Arc<Daemons>,
    metrics: Arc<AgentMetrics>,
}

/// An absolute path from a request.
fn absolute(v: &str, what: &str) -> Result<PathBuf, Status> {
    let p = PathBuf::from(v);
    if !p.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "{what} must be an absolute path, not {v:?}"
        )));
    }
    Ok(p)
}

/// A bound in milliseconds from a request (0 or absent: refused, a daemon must be bounded).
fn bound(ms: u64) -> Result<Duration, Status> {
    if ms == 0 {
        return Err(Status::invalid_argument("timeout_ms is required"));
    }
    Ok(Duration::from_millis(ms))
}

fn status_of(e: DaemonError) -> Status {
    match e {
        DaemonError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

impl AgentService {
    /// Daemons run by `atefs_bin`.
    pub fn new(atefs_bin: PathBuf) -> Self {
        Self::with_daemons(Arc::new(Daemons::new(atefs_bin)))
    }

    /// The service of `daemons`.
    pub fn with_daemons(daemons: Arc<Daemons>) -> Self {
        Self {
            daemons,
            metrics: Arc::default(),
        }
    }

    /// Counts mounts taken over from an older agent.
    pub fn taken_over(&self, n: usize) {
        self.metrics
            .taken_over
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let m = &self.metrics;
        format!(
            "# HELP atefs_node_agent_mounts_total Mount daemons started that mounted.\n# TYPE atefs_node_agent_mounts_total counter\natefs_node_agent_mounts_total {}\n\
             # HELP atefs_node_agent_mount_failures_total Mount daemons that failed to mount.\n# TYPE atefs_node_agent_mount_failures_total counter\natefs_node_agent_mount_failures_total {}\n\
             # HELP atefs_node_agent_failed_exits_total Mount daemons waited for that did not exit cleanly.\n# TYPE atefs_node_agent_failed_exits_total counter\natefs_node_agent_failed_exits_total {}\n\
             # HELP atefs_node_agent_daemons Mount daemons of this agent running.\n# TYPE atefs_node_agent_daemons gauge\natefs_node_agent_daemons {}\n\
             # HELP atefs_node_agent_taken_over_total Mounts taken over from an older agent without unmounting.\n# TYPE atefs_node_agent_taken_over_total counter\natefs_node_agent_taken_over_total {}\n",
            m.mounts.load(Ordering::Relaxed),
            m.mount_failures.load(Ordering::Relaxed),
            m.failed_exits.load(Ordering::Relaxed),
            self.daemons.running(),
            m.taken_over.load(Ordering::Relaxed),
        )
    }
}

#[tonic::async_trait]
impl pb::node_agent_server::NodeAgent for AgentService {
    async fn mount(
        &self,
        req: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountReply>, Status> {
        let r = req.into_inner();
        if r.servers.is_empty() {
            return Err(Status::invalid_argument("servers is required"));
        }
        if r.ca.is_empty() && !r.insecure_plaintext {
            return Err(Status::invalid_argument(
                "a CA is required (or insecure_plaintext)",
            ));
        }
        let spec = MountSpec {
            dir: absolute(&r.dir, "dir")?,
            cache: absolute(&r.cache, "cache")?,
            keys: absolute(&r.keys, "keys")?,
            servers: r.servers,
            ca: if r.ca.is_empty() {
                None
            } else {
                Some(absolute(&r.ca, "ca")?)
            },
            insecure_plaintext: r.insecure_plaintext,
            exclusive: r.exclusive,
            quota: (r.quota > 0).then_some(r.quota),
            call_timeout_secs: (r.call_timeout_secs > 0).then_some(r.call_timeout_secs),
            log: absolute(&r.log, "log")?,
            pid_file: absolute(&r.pid_file, "pid_file")?,
        };
        let limit = bound(r.timeout_ms)?;
        match self.daemons.start(&spec, limit).await {
            Ok(pid) => {
                self.metrics.mounts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(dir = %spec.dir.display(), pid, "mounted");
                Ok(Response::new(pb::MountReply { pid }))
            }
            Err(e) => {
                self.metrics.mount_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(dir = %spec.dir.display(), error = %e, "mount failed");
                Err(status_of(e))
            }
        }
    }

    async fn wait_exit(
        &self,
        req: Request<pb::WaitExitRequest>,
    ) -> Result<Response<pb::WaitExitReply>, Status> {
        let r = req.into_inner();
        let pid_file = absolute(&r.pid_file, "pid_file")?;
        let dir = absolute(&r.dir, "dir")?;
        let log = absolute(&r.log, "log")?;
        let limit = bound(r.timeout_ms)?;
        let exit = self
            .daemons
            .wait_exit(&pid_file, &dir, &log, limit)
            .await
            .map_err(status_of)?;
        if exit.as_ref().is_some_and(|e| !e.success) {
            self.metrics.failed_exits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Response::new(match exit {
            Some(e) => pb::WaitExitReply {
                known: true,
                success: e.success,
                status: e.status,
            },
            None => pb::WaitExitReply::default(),
        }))
    }
}
