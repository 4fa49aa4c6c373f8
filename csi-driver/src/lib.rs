//! The atefs CSI plugin: the Identity and Node services kubelet calls over a unix socket to
//! mount atefs volumes into pods (docs/csi.md).

pub mod backup;
pub mod capability;
pub mod controller;
pub mod identity;
pub mod in_flight;
pub mod keystore;
pub mod metrics;
pub use node_agent::mountinfo;
pub mod node;
pub mod orphans;
pub mod rekey;
pub mod status;
pub mod volume_id;

/// The CSI messages and services (proto/csi.proto).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("csi.v1");
}
