//! chain-server: hosts partitions of `ate` chains, each a Raft group (openraft) over three
//! replicas, behind a gRPC API.
//!
//! Map, bottom up:
//! - [`types`]: the Raft type choices and the commands a partition replicates.
//! - [`log_store`]: the Raft log, which is also where the chains' transactions live.
//! - [`state_machine`]: per-chain views pointing into that log, and snapshots.

pub mod log_store;
pub mod state_machine;
pub mod types;
