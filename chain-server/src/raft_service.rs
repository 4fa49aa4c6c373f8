//! The Raft transport, server side: decodes a peer's message and hands it to the partition.

use crate::node::Node;
use crate::pb::raft::raft_server::Raft as RaftRpc;
use crate::pb::raft::{RaftReply, RaftRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Raft gRPC service of a node.
#[derive(Clone, Debug)]
pub struct RaftService {
    node: Arc<Node>,
}

impl RaftService {
    /// Serves `node`'s partitions.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn partition(&self, p: u32) -> Result<&crate::types::Raft, Status> {
        self.partition_of(p).map(|p| &p.raft)
    }

    fn partition_of(&self, p: u32) -> Result<&crate::node::Partition, Status> {
        self.node
            .partitions
            .get(p as usize)
            .ok_or_else(|| Status::invalid_argument(format!("no partition {p}")))
    }

    /// Refuses votes while the partition's fresh-disk hold-off lasts (see `Partition`).
    fn check_may_vote(&self, p: u32) -> Result<(), Status> {
        let until = self
            .node
            .partitions
            .get(p as usize)
            .and_then(|p| p.vote_hold_off);
        match until {
            Some(t) if std::time::Instant::now() < t => Err(Status::unavailable(
                "this replica started without its vote record and does not vote yet",
            )),
            _ => Ok(()),
        }
    }
}

fn decode<T: DeserializeOwned>(body: &bytes::Bytes) -> Result<T, Status> {
    crate::shared_bytes::decode(body)
        .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
}

impl RaftService {
    /// The answer to a request for partition `p`, with this replica's room on its disk
    /// ([`crate::disk`]) unless that partition has stopped here (it takes no entries, so its
    /// leader should not wait for room on it).
    fn reply<T: Serialize, E: Serialize>(
        &self,
        p: u32,
        r: Result<T, E>,
    ) -> Result<Response<RaftReply>, Status> {
        let enc = |e: postcard::Error| Status::internal(e.to_string());
        let running = self.partition_of(p).is_ok_and(|p| p.stopped().is_none());
        let disk_free = running
            .then(|| crate::disk::free_bytes(&self.node.config.data).ok())
            .flatten();
        Ok(Response::new(match r {
            Ok(v) => RaftReply {
                body: postcard::to_stdvec(&v).map_err(enc)?,
                error: Vec::new(),
                disk_free,
            },
            Err(e) => RaftReply {
                body: Vec::new(),
                error: postcard::to_stdvec(&e).map_err(enc)?,
                disk_free,
            },
        }))
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let p = self.partition_of(req.partition)?;
        p.leader_called();
        let mut rpc: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> =
            decode(&req.body)?;
        crate::carried_hash::attach(&mut rpc.entries, &req.hashes);
        self.reply(req.partition, p.raft.append_entries(rpc).await)
    }

    async fn stage(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let p = self.partition_of(req.partition)?;
        let mut entries: Vec<crate::types::Entry> = decode(&req.body)?;
        crate::carried_hash::attach(&mut entries, &req.hashes);
        p.staged.lock().insert(entries);
        self.reply::<(), ()>(req.partition, Ok(()))
    }

    async fn append_staged(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let p = self.partition_of(req.partition)?;
        p.leader_called();
        let mut staged: crate::staging::StagedAppend = decode(&req.body)?;
        crate::carried_hash::attach(staged.full_mut(), &req.hashes);
        let rpc =
            p.staged.lock().resolve(staged).map_err(|id| {
                Status::failed_precondition(format!("entry {id} is not staged here"))
            })?;
        self.reply(req.partition, p.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let raft = self.partition(req.partition)?;
        self.check_may_vote(req.partition)?;
        self.reply(req.partition, raft.vote(decode(&req.body)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let p = self.partition_of(req.partition)?;
        p.leader_called();
        self.reply(
            req.partition,
            p.raft.install_snapshot(decode(&req.body)?).await,
        )
    }

    async fn join(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let p = self.partition_of(req.partition)?;
        let join: crate::membership::JoinRequest = decode(&req.body)?;
        let status = crate::membership::join(&self.node, p, &join)
            .await
            .map_err(membership_status)?;
        self.reply::<_, ()>(req.partition, Ok(status))
    }

    async fn forget(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let p = self.partition_of(req.partition)?;
        let ids: Vec<u64> = decode(&req.body)?;
        let reply = crate::membership::forget(&self.node, p, &ids)
            .await
            .map_err(membership_status)?;
        self.reply::<_, ()>(req.partition, Ok(reply))
    }

    async fn subscribers(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = req.into_inner();
        let p = self.partition_of(req.partition)?;
        let chain: [u8; 16] = decode(&req.body)?;
        let count = p.subscribers.count(&ate::ChainId(chain));
        self.reply::<_, ()>(req.partition, Ok(count))
    }
}

fn membership_status(e: crate::membership::MembershipError) -> Status {
    use crate::membership::MembershipError as E;
    match e {
        E::Conflict { .. } => Status::already_exists(e.to_string()),
        E::NotLeader { .. } => Status::failed_precondition(e.to_string()),
        E::Raft(_) | E::NoAnswer { .. } | E::StillHeard { .. } => {
            Status::unavailable(e.to_string())
        }
    }
}
