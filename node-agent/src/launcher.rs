//! Where the node plugin's mount daemons run: in the plugin's own process (no agent: tests,
//! machines without Kubernetes), or in the node agent's (`--node-agent`).

use crate::client::AgentClient;
use crate::daemon::{DaemonError, Daemons, Exit, MountSpec};
use std::path::Path;
use std::time::Duration;

/// Starts and waits for mount daemons.
#[derive(Debug)]
pub enum Launcher {
    /// This process's children.
    Local(Daemons),
    /// The node agent's.
    Agent(AgentClient),
}

impl Launcher {
    /// Starts a daemon; its pid once it reports the file system mounted.
    pub async fn start(&self, spec: &MountSpec, limit: Duration) -> Result<u32, DaemonError> {
        match self {
            Launcher::Local(d) => d.start(spec, limit).await,
            Launcher::Agent(a) => a.start(spec, limit).await,
        }
    }

    /// Waits until the daemon recorded in `pid_file` has exited; how, when known.
    pub async fn wait_exit(
        &self,
        pid_file: &Path,
        dir: &Path,
        log: &Path,
        limit: Duration,
    ) -> Result<Option<Exit>, DaemonError> {
        match self {
            Launcher::Local(d) => d.wait_exit(pid_file, dir, log, limit).await,
            Launcher::Agent(a) => a.wait_exit(pid_file, dir, log, limit).await,
        }
    }
}
