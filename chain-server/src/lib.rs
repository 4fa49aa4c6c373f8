//! chain-server: hosts partitions of `ate` chains, each a Raft group (openraft) over three
//! replicas, behind a gRPC API.
//!
//! Map, bottom up:
//! - [`types`]: the Raft type choices and the commands a partition replicates.
//! - [`log_store`]: the Raft log, which is also where the chains' transactions live.
//! - [`state_machine`]: per-chain views pointing into that log, and snapshots.
//! - [`disk`]: free space, and which commits a leader takes as it runs out.
//! - `shared_bytes`: Raft messages decoded without copying the transactions they carry.
//! - `carried_hash`: the hashes commit entries carry, beside a Raft message's body.

mod carried_hash;
pub mod disk;
pub mod in_use;
pub mod log_bound;
pub mod log_store;
pub mod membership;
mod shared_bytes;
mod snapshot_build;
pub mod snapshot_data;
pub mod state_machine;
pub mod types;

pub use ate::remote::pb;
pub mod network;
pub mod node;
pub mod raft_service;
mod raft_wire;
pub mod staging;
pub mod tls;

/// The largest gRPC message either side accepts: one transaction at its limit, plus room.
pub const MAX_MESSAGE: usize = ate::tx::MAX_TX_BYTES + (1 << 20);
pub mod api;
pub mod metrics;
pub mod subscribe;
