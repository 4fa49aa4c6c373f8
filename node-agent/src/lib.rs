//! The atefs node agent: runs the `atefs mount` daemons of a node's staged volumes for the CSI
//! node plugin, in a container of its own (docs/kubernetes.md), so that restarting or upgrading
//! the plugin leaves the pods' mounts alone. The plugin reaches it through [`Launcher`], which
//! also runs daemons in-process when no agent is configured.

pub mod client;
pub mod daemon;
pub mod http;
pub mod launcher;
pub mod mountinfo;
pub mod registry;
pub mod service;
pub mod socket;

pub use launcher::Launcher;

/// Generated gRPC code (proto/node_agent.proto).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("atefs.node_agent.v1");
}
