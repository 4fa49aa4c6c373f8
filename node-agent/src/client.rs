//! The plugin's side of the node agent: a gRPC client over the agent's unix socket.

use crate::daemon::{DaemonError, Exit, MountSpec};
use crate::pb;
use crate::pb::node_agent_client::NodeAgentClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A client of the agent at a unix socket; connects on first use and again after the agent
/// restarted.
#[derive(Clone, Debug)]
pub struct AgentClient {
    inner: NodeAgentClient<Channel>,
}

fn path_str(p: &Path) -> Result<String, DaemonError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| DaemonError::Agent(format!("{} is not UTF-8", p.display())))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn agent_error(s: tonic::Status) -> DaemonError {
    match s.code() {
        tonic::Code::DeadlineExceeded => DaemonError::Agent(format!("timed out: {}", s.message())),
        _ => DaemonError::Agent(s.message().to_string()),
    }
}

impl AgentClient {
    /// A client of the agent listening on `socket`. Must be called within a tokio runtime
    /// (the channel's worker is spawned on it).
    pub fn new(socket: PathBuf) -> Result<Self, DaemonError> {
        // The URI is required by the API and unused: every connection goes to the socket.
        let endpoint = Endpoint::try_from("http://node-agent.invalid")
            .map_err(|e| DaemonError::Agent(e.to_string()))?;
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(
            move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            },
        ));
        Ok(Self {
            inner: NodeAgentClient::new(channel),
        })
    }

    /// See [`crate::daemon::Daemons::start`].
    pub async fn start(&self, spec: &MountSpec, limit: Duration) -> Result<u32, DaemonError> {
        let req = pb::MountRequest {
            dir: path_str(&spec.dir)?,
            cache: path_str(&spec.cache)?,
            keys: path_str(&spec.keys)?,
            servers: spec.servers.clone(),
            ca: spec
                .ca
                .as_deref()
                .map(path_str)
                .transpose()?
                .unwrap_or_default(),
            insecure_plaintext: spec.insecure_plaintext,
            exclusive: spec.exclusive,
            quota: spec.quota.unwrap_or(0),
            log: path_str(&spec.log)?,
            pid_file: path_str(&spec.pid_file)?,
            timeout_ms: millis(limit),
            call_timeout_secs: spec.call_timeout_secs.unwrap_or(0),
        };
        let mut c = self.inner.clone();
        c.mount(req)
            .await
            .map(|r| r.into_inner().pid)
            .map_err(agent_error)
    }

    /// See [`crate::daemon::Daemons::wait_exit`].
    pub async fn wait_exit(
        &self,
        pid_file: &Path,
        dir: &Path,
        log: &Path,
        limit: Duration,
    ) -> Result<Option<Exit>, DaemonError> {
        let req = pb::WaitExitRequest {
            pid_file: path_str(pid_file)?,
            dir: path_str(dir)?,
            log: path_str(log)?,
            timeout_ms: millis(limit),
        };
        let mut c = self.inner.clone();
        let r = c.wait_exit(req).await.map_err(agent_error)?.into_inner();
        Ok(r.known.then_some(Exit {
            success: r.success,
            status: r.status,
        }))
    }
}
