//! The Raft transport, client side: openraft's messages to a peer's Raft service over gRPC,
//! postcard-encoded inside the protobuf envelope (proto/raft.proto).

use crate::disk::PeerRoom;
use crate::log_store::LogStore;
use crate::metrics::PeerTimings;
use crate::raft_wire::{Framed, Shared};
use crate::staging::StagedAppend;
use crate::tls::Tls;
use crate::types::{Command, Entry, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Connections to the peers' Raft services by Raft address, one each, shared by every
/// partition's transport and the membership upkeep (one TLS handshake per peer).
#[derive(Clone, Debug)]
pub struct PeerChannels {
    tls: Arc<Tls>,
    source: Option<std::net::IpAddr>,
    open: Arc<parking_lot::Mutex<HashMap<String, Channel>>>,
}

impl PeerChannels {
    /// None open yet; connections go out from `source` when given.
    pub fn new(tls: Arc<Tls>, source: Option<std::net::IpAddr>) -> Self {
        Self {
            tls,
            source,
            open: Default::default(),
        }
    }

    /// The connection to `addr` (made lazily, on first use).
    pub fn get(&self, addr: &str) -> Result<Channel, crate::tls::TlsError> {
        let mut map = self.open.lock();
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = self.tls.channel(addr, self.source)?;
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// Opens connections to the peers of one partition.
#[derive(Clone, Debug)]
pub struct Network {
    partition: u32,
    channels: PeerChannels,
    replication: PeerTimings,
    /// The partition's log, read for entries to send ahead.
    log: LogStore,
    /// The room the peers report, shared by all partitions.
    room: PeerRoom,
}

impl Network {
    /// Connections for `partition`, shared by all partitions through `channels`; what the
    /// peers say of their disks goes into `room`.
    pub fn new(partition: u32, channels: PeerChannels, room: PeerRoom, log: LogStore) -> Self {
        Self {
            partition,
            channels,
            replication: PeerTimings::default(),
            log,
            room,
        }
    }

    /// Round trips of the replication requests that carried entries, per follower.
    pub fn replication_timings(&self) -> PeerTimings {
        self.replication.clone()
    }
}

/// Where a request goes, and where its answer's news of the peer's disk goes.
#[derive(Clone, Debug)]
struct To {
    partition: u32,
    target: u64,
    room: PeerRoom,
}

/// One peer.
#[derive(Debug)]
pub struct Peer {
    to: To,
    client: Option<Channel>,
    error: Option<String>,
    in_flight: Option<InFlight>,
    replication: PeerTimings,
    log: LogStore,
    /// Entries the follower holds staged (sent ahead and answered), by index.
    held: BTreeMap<u64, LogId<u64>>,
    /// Entries on their way ahead.
    push: Option<Push>,
}

/// A `Stage` request in flight: the log ids it carries once answered.
#[derive(Debug)]
struct Push {
    first: u64,
    task: tokio::task::JoinHandle<Option<Vec<LogId<u64>>>>,
}

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        let channel = self.channels.get(crate::membership::raft_addr(node));
        let (client, error) = match channel {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Peer {
            to: To {
                partition: self.partition,
                target,
                room: self.room.clone(),
            },
            client,
            error,
            in_flight: None,
            replication: self.replication.clone(),
            log: self.log.clone(),
            held: BTreeMap::new(),
            push: None,
        }
    }
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
    Stage,
    AppendStaged,
}

/// Entries sent ahead at a time: what one request carries.
const STAGE_BYTES: u64 = crate::log_store::REPLICATION_BYTES;
/// Less than this ahead is not worth a request of its own (small commits travel fast).
const STAGE_MIN: u64 = 1 << 20;

type AppendResult = Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>>;

/// Which entries an AppendEntries carries: openraft sends the same again after a timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AppendKey {
    vote: openraft::Vote<u64>,
    prev: Option<openraft::LogId<u64>>,
    first: Option<openraft::LogId<u64>>,
    last: Option<openraft::LogId<u64>>,
}

impl AppendKey {
    fn of(rpc: &AppendEntriesRequest<TypeConfig>) -> Self {
        Self {
            vote: rpc.vote,
            prev: rpc.prev_log_id,
            first: rpc.entries.first().map(|e| e.log_id),
            last: rpc.entries.last().map(|e| e.log_id),
        }
    }
}

/// An AppendEntries that keeps running after openraft stopped waiting for it.
#[derive(Debug)]
struct InFlight {
    key: AppendKey,
    answer: tokio::task::JoinHandle<AppendResult>,
}

/// How long a replication request may outlive openraft's wait (one heartbeat) before it is
/// given up: long enough for a follower to write and sync the largest request on a slow disk.
pub const OUTLIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// The answer of a request's task (which only fails if the task panicked).
// The error type is the one openraft's `RaftNetwork::append_entries` returns.
#[allow(clippy::result_large_err)]
fn joined(answer: Result<AppendResult, tokio::task::JoinError>) -> AppendResult {
    match answer {
        Ok(answer) => answer,
        Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
    }
}

/// Sends one AppendEntries, naming the entries the follower holds staged; when it no longer
/// holds them (a restart, say) they go in full.
#[allow(clippy::result_large_err)]
async fn send_append(
    client: Channel,
    to: To,
    rpc: AppendEntriesRequest<TypeConfig>,
    staged: Option<StagedAppend>,
    timings: PeerTimings,
) -> AppendResult {
    let started = std::time::Instant::now();
    let attempt = async {
        let Some(staged) = staged else {
            return call(client, &to, Rpc::Append, &rpc).await;
        };
        let sent = call(client.clone(), &to, Rpc::AppendStaged, &staged);
        match sent.await {
            Err(RPCError::Network(e)) => {
                tracing::debug!(target = to.target, error = %e, "staged entries not used; sending them in full");
                call(client, &to, Rpc::Append, &rpc).await
            }
            other => other,
        }
    };
    match tokio::time::timeout(OUTLIVE, attempt).await {
        Ok(answer) => {
            if answer.is_ok() {
                timings
                    .lock()
                    .entry(to.target)
                    .or_default()
                    .observe(started.elapsed());
            }
            answer
        }
        Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
    }
}

impl Peer {
    /// Sends the follower the entries after `last` that this leader holds, while it appends
    /// the request that ends at `last` (one such request at a time).
    fn push_after(&mut self, client: Channel, last: u64) {
        if self.push.is_some() {
            return;
        }
        let Ok(entries) = self.log.read_range_within(
            last + 1,
            u64::MAX,
            STAGE_BYTES,
            crate::log_store::Read::Whole,
        ) else {
            return;
        };
        let bytes: u64 = entries
            .iter()
            .map(|e| crate::log_store::tx_len(e) as u64)
            .sum();
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return;
        };
        if bytes < STAGE_MIN {
            return;
        }
        let ids: Vec<LogId<u64>> = entries.iter().map(|e| e.log_id).collect();
        let to = self.to.clone();
        let task = tokio::spawn(async move {
            let sent =
                call::<_, (), openraft::error::Infallible>(client, &to, Rpc::Stage, &entries);
            match tokio::time::timeout(OUTLIVE, sent).await {
                Ok(Ok(())) => Some(ids),
                _ => None,
            }
        });
        self.push = Some(Push { first, task });
    }

    fn client(&self) -> Result<Channel, Unreachable> {
        self.client
            .clone()
            .ok_or_else(|| Unreachable::new(&Failed(self.error.clone().unwrap_or_default())))
    }
}

async fn call<Req, Resp, E>(
    client: Channel,
    to: &To,
    rpc: Rpc,
    req: &Req,
) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
where
    Req: Serialize + Shared + Sync,
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    let unreachable = |why: String| RPCError::Unreachable(Unreachable::new(&Failed(why)));
    let path = PathAndQuery::from_static(match rpc {
        Rpc::Append => "/atefs.raft.v1.Raft/AppendEntries",
        Rpc::Vote => "/atefs.raft.v1.Raft/Vote",
        Rpc::Snapshot => "/atefs.raft.v1.Raft/InstallSnapshot",
        Rpc::Stage => "/atefs.raft.v1.Raft/Stage",
        Rpc::AppendStaged => "/atefs.raft.v1.Raft/AppendStaged",
    });
    let reply = match Framed::new(to.partition, req, crate::MAX_MESSAGE) {
        Ok(framed) => crate::raft_wire::unary(client, path, framed, crate::MAX_MESSAGE).await,
        Err(e) => Err(e),
    };
    let reply = match reply {
        Ok(r) => r,
        Err(s) if s.code() == tonic::Code::Unavailable => {
            return Err(unreachable(s.message().to_string()))
        }
        Err(s) => return Err(RPCError::Network(NetworkError::new(&Failed(s.to_string())))),
    };
    if let Some(free) = reply.disk_free {
        to.room.note(to.target, free);
    }
    if !reply.error.is_empty() {
        let e: RaftError<u64, E> = postcard::from_bytes(&reply.error)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        return Err(RPCError::RemoteError(RemoteError::new(to.target, e)));
    }
    postcard::from_bytes(&reply.body).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

/// The transactions among `entries`, which the log holds as [`bytes::Bytes`].
fn transactions<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<bytes::Bytes> {
    entries
        .into_iter()
        .filter_map(|e| match &e.payload {
            openraft::EntryPayload::Normal(
                Command::Commit { tx, .. } | Command::Create { tx, .. },
            ) => Some(tx.clone()),
            _ => None,
        })
        .collect()
}

impl Shared for AppendEntriesRequest<TypeConfig> {
    fn shared(&self) -> Vec<bytes::Bytes> {
        transactions(&self.entries)
    }
    fn hashes(&self) -> Vec<u8> {
        crate::carried_hash::of(&self.entries)
    }
}

impl Shared for Vec<Entry> {
    fn shared(&self) -> Vec<bytes::Bytes> {
        transactions(self)
    }
    fn hashes(&self) -> Vec<u8> {
        crate::carried_hash::of(self)
    }
}

impl Shared for StagedAppend {
    fn shared(&self) -> Vec<bytes::Bytes> {
        transactions(self.full())
    }
    fn hashes(&self) -> Vec<u8> {
        crate::carried_hash::of(self.full())
    }
}

impl Shared for InstallSnapshotRequest<TypeConfig> {}
impl Shared for VoteRequest<u64> {}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> AppendResult {
        let client = self.client().map_err(RPCError::Unreachable)?;
        if rpc.entries.is_empty() {
            // Heartbeats are small and carry the commit index: they never wait.
            return call(client, &self.to, Rpc::Append, &rpc).await;
        }
        // openraft drops this future after one heartbeat; the request goes on in a task of
        // its own, and openraft's retry of the same entries waits for its answer instead of
        // sending them again (a follower busy writing them would get them twice, and again,
        // and replication would never advance). Other entries wait for it too: one request
        // of entries at a time per follower, as openraft intends.
        let key = AppendKey::of(&rpc);
        if let Some(other) = self.in_flight.as_mut().filter(|f| f.key != key) {
            // Awaited in place: when openraft drops this future, the request stays here.
            let _ = (&mut other.answer).await;
            self.in_flight = None;
        }
        if self.in_flight.is_none() {
            let last = rpc.entries.last().map_or(0, |e| e.log_id.index);
            // Entries of this request still on their way ahead are waited for, not sent
            // again.
            if let Some(push) = self.push.as_mut().filter(|p| p.first <= last) {
                if let Ok(Some(ids)) = (&mut push.task).await {
                    self.held.extend(ids.into_iter().map(|id| (id.index, id)));
                }
                self.push = None;
            }
            let staged = StagedAppend::of(&rpc, &self.held);
            // The follower uses them (or drops them) with this request.
            self.held = self.held.split_off(&(last + 1));
            let timings = self.replication.clone();
            self.in_flight = Some(InFlight {
                key,
                answer: tokio::spawn(send_append(
                    client.clone(),
                    self.to.clone(),
                    rpc,
                    staged,
                    timings,
                )),
            });
            self.push_after(client, last);
        }
        let Some(flight) = self.in_flight.as_mut() else {
            return Err(RPCError::Network(NetworkError::new(&Failed(
                "no request in flight".into(),
            ))));
        };
        let answer = (&mut flight.answer).await;
        self.in_flight = None;
        joined(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let client = self.client().map_err(RPCError::Unreachable)?;
        call(client, &self.to, Rpc::Snapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let client = self.client().map_err(RPCError::Unreachable)?;
        call(client, &self.to, Rpc::Vote, &rpc).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pb::raft::raft_server::{Raft as RaftRpc, RaftServer};
    use crate::pb::raft::{RaftReply, RaftRequest};
    use crate::types::Command;
    use openraft::{CommittedLeaderId, EntryPayload, Vote};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tonic::{Request, Response, Status};

    /// A follower that lost what it was sent ahead (a restart): it refuses every
    /// AppendStaged and counts the entries that come in full.
    #[derive(Clone, Default)]
    struct Forgetful {
        named: Arc<AtomicUsize>,
        full: Arc<AtomicUsize>,
    }

    fn ok<T: Serialize>(v: &T) -> Result<Response<RaftReply>, Status> {
        Ok(Response::new(RaftReply {
            body: postcard::to_stdvec(v).unwrap(),
            error: Vec::new(),
            disk_free: Some(FREE),
        }))
    }

    #[tonic::async_trait]
    impl RaftRpc for Forgetful {
        async fn append_entries(
            &self,
            req: Request<RaftRequest>,
        ) -> Result<Response<RaftReply>, Status> {
            let rpc: AppendEntriesRequest<TypeConfig> =
                crate::shared_bytes::decode(&req.into_inner().body).unwrap();
            self.full.fetch_add(rpc.entries.len(), SeqCst);
            ok(&AppendEntriesResponse::<u64>::Success)
        }
        async fn append_staged(
            &self,
            _: Request<RaftRequest>,
        ) -> Result<Response<RaftReply>, Status> {
            self.named.fetch_add(1, SeqCst);
            Err(Status::failed_precondition("not staged here"))
        }
        async fn stage(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
            ok(&())
        }
        async fn vote(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("vote"))
        }
        async fn join(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("join"))
        }
        async fn forget(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("forget"))
        }
        async fn subscribers(
            &self,
            _: Request<RaftRequest>,
        ) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("subscribers"))
        }
        async fn install_snapshot(
            &self,
            _: Request<RaftRequest>,
        ) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("install_snapshot"))
        }
    }

    /// The room `Forgetful` reports.
    const FREE: u64 = 12345;

    fn entry(index: u64) -> crate::types::Entry {
        crate::types::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Commit {
                chain: [3; 16],
                tx: vec![index as u8; 1000].into(),
                session: None,
                hash: None,
            }),
        }
    }

    #[tokio::test]
    async fn entries_the_follower_no_longer_holds_go_again_in_full() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let follower = Forgetful::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(follower.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let log = LogStore::open(Arc::new(ate::storage::MemStorage::new()), 1 << 20).unwrap();
        let room = PeerRoom::default();
        let channels = PeerChannels::new(Arc::new(Tls::plaintext()), None);
        let mut network = Network::new(0, channels, room.clone(), log);
        let mut peer = network
            .new_client(2, &BasicNode::new(addr.to_string()))
            .await;
        let entries: Vec<_> = (1..=3).map(entry).collect();
        // As far as this leader knows, the follower holds them staged.
        peer.held
            .extend(entries.iter().map(|e| (e.log_id.index, e.log_id)));
        let rpc = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        };
        let option = RPCOption::new(std::time::Duration::from_secs(10));
        let answer = peer.append_entries(rpc, option).await.unwrap();
        assert_eq!(answer, AppendEntriesResponse::Success);
        assert_eq!(follower.named.load(SeqCst), 1, "first named");
        assert_eq!(follower.full.load(SeqCst), 3, "then sent in full");
        assert!(peer.held.is_empty(), "nothing is believed staged any more");
        let heard = room.fullest(crate::disk::FRESH);
        assert_eq!(heard, Some((2, FREE)), "the follower's room is noted");
    }
}
