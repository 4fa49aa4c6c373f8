//! The client API (proto/chain.proto). A thin adapter: checks requests, proposes commands to
//! the partition's Raft group and maps outcomes to status codes. Followers answer writes with
//! UNAVAILABLE and the leader's address in the `x-atefs-leader` metadata (clients retry
//! there); with no leader known they say so, which clients surface as "no quorum".

use crate::node::{Node, Partition};
use crate::pb::chain::chains_server::Chains;
use crate::pb::chain::{
    BarrierReply, ChainRef, ChallengeReply, ChallengeRequest, CommitBatchReply, CommitBatchRequest,
    CommitReply, CommitRequest, CommitResult, CompactReply, CompactRequest, CreateRequest,
    DeleteReply, DeleteRequest, FetchSnapshotRequest, InfoReply, SetQuotaReply, SetQuotaRequest,
    SnapshotChunk, SubscribeEvent, SubscribeRequest, SubscribersReply,
};
use crate::state_machine::refusal_of;
use crate::types::{Command, Outcome, Refusal};
use ate::validate::{check_skeleton, check_stateful};
use ate::{ChainId, PublicKey, Skeleton, Transaction, TxHash};
use openraft::error::{ClientWriteError, RaftError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

/// Metadata key naming the leader's API address on a redirect.
pub const LEADER_HEADER: &str = "x-atefs-leader";
const NONCE_TTL: Duration = Duration::from_secs(60);
/// How long a request waits for its partition to commit or confirm leadership. A leader cut
/// off from its peers does not know it yet; the client retries elsewhere, and a commit that
/// did land is then answered from the deduplication table with its original index.
const QUORUM_WAIT: Duration = Duration::from_secs(5);
/// Most transactions in one CommitBatch (the message size bound applies as well).
const MAX_BATCH: usize = 1024;
/// Transactions of one commit stream proposed but not yet answered: the server reads no
/// further until the oldest is answered (the bound on what a stream holds in memory).
const STREAM_DEPTH: usize = 8;

/// The Chains service of a node.
#[derive(Clone, Debug)]
pub struct Api {
    node: Arc<Node>,
    nonces: Arc<Mutex<HashMap<[u8; 32], Instant>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

fn chain_id(b: &[u8]) -> Result<ChainId, Status> {
    let a: [u8; 16] = b
        .try_into()
        .map_err(|_| Status::invalid_argument("chain id must be 16 bytes"))?;
    Ok(ChainId(a))
}

/// Decodes a transaction and checks what needs no chain state (format, signature).
fn precheck_stateless(tx: &[u8]) -> Result<Skeleton, Status> {
    let sk = Transaction::decode_skeleton(tx)
        .map_err(|e| Status::invalid_argument(format!("transaction: {e}")))?;
    check_skeleton(&sk).map_err(|e| refused(refusal_of(&e), e.to_string()))?;
    Ok(sk)
}

/// A writer session as sent: empty for none, else 16 bytes.
fn session_of(b: &[u8]) -> Result<Option<[u8; 16]>, Status> {
    if b.is_empty() {
        return Ok(None);
    }
    b.try_into()
        .map(Some)
        .map_err(|_| Status::invalid_argument("a session is 16 bytes, or empty"))
}

/// A genesis hash as a subscription carries it (empty: not given).
fn genesis_of(b: &[u8]) -> Result<Option<TxHash>, Status> {
    if b.is_empty() {
        return Ok(None);
    }
    <[u8; 32]>::try_from(b)
        .map(|h| Some(TxHash(h)))
        .map_err(|_| Status::invalid_argument("a genesis hash is 32 bytes, or empty"))
}

/// The command committing `tx`, checked and found to hash to `hash`.
fn commit_command(
    chain: ChainId,
    tx: bytes::Bytes,
    hash: TxHash,
    session: Option<[u8; 16]>,
) -> Command {
    Command::Commit {
        chain: chain.0,
        tx,
        session,
        hash: Some(hash.0),
    }
}

/// One transaction's answer as a batch or stream carries it.
fn commit_result(r: Result<u64, Status>) -> CommitResult {
    match r {
        Ok(index) => CommitResult {
            index,
            code: 0,
            message: String::new(),
        },
        Err(s) => CommitResult {
            index: 0,
            code: s.code() as i32,
            message: s.message().to_string(),
        },
    }
}

fn refused(kind: Refusal, reason: String) -> Status {
    match kind {
        Refusal::Invalid => Status::invalid_argument(reason),
        Refusal::Unauthorized => Status::permission_denied(reason),
        Refusal::Precondition => Status::failed_precondition(reason),
        Refusal::NoChain => Status::not_found(reason),
        Refusal::Exists => Status::already_exists(reason),
        Refusal::Quota => Status::resource_exhausted(reason),
        Refusal::BelowUsage => Status::out_of_range(reason),
    }
}

impl Api {
    /// Serves `node`.
    pub fn new(node: Arc<Node>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            node,
            nonces: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    fn redirect(&self, p: &Partition, leader: Option<u64>) -> Status {
        match leader.and_then(|l| self.node.api_addr(p, l)) {
            Some(addr) => {
                let mut s = Status::unavailable("not the leader of this chain's partition");
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(LEADER_HEADER, v);
                }
                s
            }
            None => Status::unavailable("the partition has no leader (no quorum?)"),
        }
    }

    /// Refuses a subscription to a chain made again since its subscriber read it (deleted
    /// and restored from a backup: same id, another history), `FAILED_PRECONDITION`, instead
    /// of feeding the subscriber another chain's transactions after what it holds. Either
    /// the subscriber knows another genesis, or it subscribes from beyond the chain's end
    /// (a subscriber that does not send the genesis, or a chain whose genesis the replicas
    /// do not know). Only a leader, after a read index, decides; a follower may only lag,
    /// and sends the subscriber to its leader.
    async fn refuse_made_again(
        &self,
        p: &Partition,
        chain: ChainId,
        from: u64,
        genesis: Option<TxHash>,
    ) -> Result<(), Status> {
        let other = |p: &Partition| {
            p.sm.with_chain(&chain, |c| {
                if genesis.is_some() && c.genesis.is_some() && c.genesis != genesis {
                    Some("its genesis is not the one the subscriber read".to_string())
                } else if from > c.index.saturating_add(1) {
                    Some(format!(
                        "it ends at index {}, before this subscription's {from}",
                        c.index
                    ))
                } else {
                    None
                }
            })
            .flatten()
        };
        if other(p).is_none() {
            return Ok(());
        }
        let leader = p.leader();
        if leader != Some(self.node.config.id) {
            return Err(self.redirect(p, leader));
        }
        self.linearize(p).await?;
        match other(p) {
            None => Ok(()),
            Some(why) => Err(Status::failed_precondition(format!(
                "chain {chain} was made again (restored from a backup?) since the subscriber read it: {why}; mount it afresh"
            ))),
        }
    }

    /// Proposes a command and waits until it is applied.
    async fn propose(&self, p: &Partition, cmd: Command) -> Result<u64, Status> {
        let started = Instant::now();
        let r = tokio::time::timeout(QUORUM_WAIT, p.raft.client_write(cmd))
            .await
            .map_err(|_| Status::unavailable("no quorum confirmed the commit in time"))?;
        match r {
            Ok(resp) => match resp.data {
                Outcome::Applied { index } => {
                    self.metrics.commit_latency(p.id, started.elapsed());
                    Ok(index)
                }
                Outcome::Refused { kind, reason } => Err(refused(kind, reason)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.redirect(p, f.leader_id))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    /// Proposes a writer's transactions in their order: each proposal reaches the Raft core
    /// before the next is made (one poll each, in order), then all are awaited together, so
    /// they share replication round trips and fdatasyncs. The chain's state is checked before
    /// proposing only for the first (the others may build on it); the state machine validates
    /// every one again when it applies it.
    async fn propose_in_order(
        &self,
        p: &Partition,
        chain: ChainId,
        txs: Vec<bytes::Bytes>,
        session: Option<[u8; 16]>,
    ) -> Vec<Result<u64, Status>> {
        type Proposal<'a> =
            std::pin::Pin<Box<dyn Future<Output = Result<u64, Status>> + Send + 'a>>;
        enum Slot<'a> {
            Proposing(Proposal<'a>),
            Done(Result<u64, Status>),
        }
        let mut slots: Vec<Slot<'_>> = txs
            .into_iter()
            .enumerate()
            .map(
                |(i, tx)| match self.precheck_in_order(p, chain, &tx, i == 0) {
                    Ok(hash) => {
                        let cmd = commit_command(chain, tx, hash, session);
                        Slot::Proposing(Box::pin(self.propose(p, cmd)))
                    }
                    Err(e) => Slot::Done(Err(e)),
                },
            )
            .collect();
        std::future::poll_fn(|cx| {
            for slot in &mut slots {
                if let Slot::Proposing(f) = slot {
                    if let std::task::Poll::Ready(r) = f.as_mut().poll(cx) {
                        *slot = Slot::Done(r);
                    }
                }
            }
            std::task::Poll::Ready(())
        })
        .await;
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            out.push(match slot {
                Slot::Proposing(f) => f.await,
                Slot::Done(r) => r,
            });
        }
        out
    }

    /// Serves one commit stream whose first request is `first` (see the CommitStream RPC).
    /// Each transaction's proposal reaches the Raft core before the next request is read, so
    /// the log holds them in the stream's order; answers go out in that order too.
    async fn serve_commit_stream(
        self,
        chain: ChainId,
        first: CommitRequest,
        mut inbound: tonic::Streaming<CommitRequest>,
        out: tokio::sync::mpsc::Sender<Result<CommitResult, Status>>,
    ) {
        let mut pending: std::collections::VecDeque<StreamAnswer> = Default::default();
        let mut next = Some(first);
        let mut open = true;
        loop {
            if let Some(req) = next.take() {
                let proposal = match chain_id(&req.chain) {
                    Ok(c) if c == chain => self.stream_proposal(chain, req, pending.is_empty()),
                    Ok(_) => Err(Status::invalid_argument(
                        "every transaction of a commit stream must be of its first one's chain",
                    )),
                    Err(e) => Err(e),
                };
                match proposal {
                    Ok(mut proposal) => {
                        // Its first poll hands the proposal to the Raft core (in order); one
                        // answered at once must not be polled again.
                        let first = std::future::poll_fn(|cx| {
                            std::task::Poll::Ready(proposal.as_mut().poll(cx))
                        })
                        .await;
                        pending.push_back(match first {
                            std::task::Poll::Ready(r) => StreamAnswer::Given(Some(r)),
                            std::task::Poll::Pending => {
                                StreamAnswer::Coming(tokio::spawn(proposal))
                            }
                        });
                    }
                    Err(e) => pending.push_back(StreamAnswer::Given(Some(Err(e)))),
                }
            }
            tokio::select! {
                biased;
                answer = async { pending.front_mut().expect("checked non-empty").take().await },
                    if !pending.is_empty() =>
                {
                    pending.pop_front();
                    let fatal = matches!(&answer, Err(s) if s.code() == Code::Unavailable);
                    let item = match answer {
                        Err(s) if fatal => Err(s),
                        other => Ok(commit_result(other)),
                    };
                    if out.send(item).await.is_err() || fatal {
                        return;
                    }
                }
                req = inbound.message(), if open && pending.len() < STREAM_DEPTH => match req {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => open = false,
                    Err(_) => return,
                },
                else => return,
            }
        }
    }

    /// The checked proposal of one streamed transaction; `alone` when nothing of the stream
    /// is in flight, so that the chain's state can be checked first (otherwise the
    /// transaction may build on those in flight, and the state machine checks it on apply).
    fn stream_proposal(
        &self,
        chain: ChainId,
        req: CommitRequest,
        alone: bool,
    ) -> Result<StreamedProposal, Status> {
        let session = session_of(&req.session)?;
        let hash = self.precheck_in_order(self.node.partition(&chain), chain, &req.tx, alone)?;
        let api = self.clone();
        Ok(Box::pin(async move {
            let p = api.node.partition(&chain);
            let cmd = commit_command(chain, req.tx, hash, session);
            api.propose(p, cmd).await
        }))
    }

    /// [`Self::precheck`] for the first of a writer's transactions in flight, only the
    /// stateless checks for the others: those may build on the ones before them, and the
    /// state machine checks each against the chain's state when it applies it.
    fn precheck_in_order(
        &self,
        p: &Partition,
        chain: ChainId,
        tx: &[u8],
        first: bool,
    ) -> Result<TxHash, Status> {
        let sk = precheck_stateless(tx)?;
        if first {
            if let Some(Err(e)) = p.sm.with_chain(&chain, |c| check_stateful(&c.view, &sk.tx)) {
                return Err(refused(refusal_of(&e), e.to_string()));
            }
        }
        self.disk_room(p, chain, &sk, tx.len() as u64)?;
        Ok(sk.hash)
    }

    /// Checks a transaction before it is proposed: the signature and format always, the
    /// chain's state when this node has the chain (the leader has it), and room on the disk.
    fn precheck(&self, p: &Partition, chain: ChainId, tx: &[u8]) -> Result<TxHash, Status> {
        self.precheck_in_order(p, chain, tx, true)
    }

    /// Refuses a commit the fullest replica's disk should not take ([`crate::disk`]):
    /// RESOURCE_EXHAUSTED, which a mount reports as ENOSPC, while the replicas still have room
    /// to apply, snapshot and vote. A disk that cannot be asked is not a reason to refuse.
    fn disk_room(
        &self,
        p: &Partition,
        chain: ChainId,
        sk: &Skeleton,
        len: u64,
    ) -> Result<(), Status> {
        use crate::disk::{admit, free_bytes, Admit};
        let reserve = self.node.config.disk_reserve;
        if reserve == 0 {
            return Ok(());
        }
        let own = match free_bytes(&self.node.config.data) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the data directory's free space");
                None
            }
        };
        let peer = self.node.peer_room.fullest(crate::disk::FRESH);
        let (free, whose) = match (own, peer) {
            (Some(own), Some((id, free))) if free < own => (free, format!("replica {id}")),
            (Some(own), _) => (own, "this replica".to_string()),
            (None, Some((id, free))) => (free, format!("replica {id}")),
            (None, None) => return Ok(()),
        };
        let ok = match admit(free, reserve, len) {
            Admit::Any => true,
            Admit::Freeing => p.sm.frees_space(&chain, &sk.tx),
            Admit::None => false,
        };
        if ok {
            return Ok(());
        }
        Err(Status::resource_exhausted(format!(
            "the chain servers' disks are nearly full ({free} bytes free on {whose}, the fullest; {reserve} kept in reserve): only deletions are taken; remove files, or give the chain servers larger disks"
        )))
    }

    /// Proposes `cmd`, an owner's change to `chain`, once the owner's proof over `digest`
    /// checks out against the chain's current state.
    async fn as_owner(
        &self,
        chain: ChainId,
        (nonce, key, sig): (&[u8], &[u8], &[u8]),
        digest: &[u8; 32],
        cmd: Command,
    ) -> Result<u64, Status> {
        let p = self.node.partition(&chain);
        self.linearize(p).await?;
        let owner = (
            ate::RootAuthority::is_owner as fn(&_, &_) -> bool,
            "an owner",
        );
        self.check_proof(p, chain, nonce, key, sig, digest, owner)?;
        self.propose(p, cmd).await
    }

    /// Makes sure a chain this replica does not know is not merely unapplied here: a leader
    /// fresh from a restart applies its log after it wins. A chain it knows needs nothing
    /// (a subscription to a replica without quorum is served from what it has, and goes live
    /// when quorum returns); one it does not know is looked for again after a read index
    /// (UNAVAILABLE or a redirect when that cannot be had, so the client retries).
    async fn known_chain(&self, p: &Partition, chain: ChainId) -> Result<(), Status> {
        if p.sm.with_chain(&chain, |_| ()).is_some() {
            return Ok(());
        }
        self.linearize(p).await
    }

    /// Waits until this node is the partition's confirmed leader and has applied everything
    /// committed before the call (openraft's read index), so that what is read next is not
    /// stale: a leader fresh from a restart or an election applies the log after it wins,
    /// and until then it would answer NOT_FOUND for chains that exist.
    ///
    /// openraft's read index alone is not enough after a restart: a replica that led before
    /// it stopped is leader again at once, in the same term, without a first entry of its own
    /// to commit, and its read index is then the commit index saved last (`save_committed` is
    /// not synced on its own), behind commits that were acknowledged. So the read also waits
    /// until everything this leader held when asked is applied: a leader commits its whole
    /// log while it leads, and one deposed meanwhile times out into UNAVAILABLE.
    async fn linearize(&self, p: &Partition) -> Result<(), Status> {
        let held = p.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let r = tokio::time::timeout(QUORUM_WAIT, p.raft.ensure_linearizable())
            .await
            .map_err(|_| Status::unavailable("no quorum confirmed the leadership in time"))?;
        match r {
            Ok(_) => {}
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                return Err(self.redirect(p, f.leader_id))
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        }
        p.raft
            .wait(Some(QUORUM_WAIT))
            .applied_index_at_least(Some(held), "read after the leader's log")
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(format!("the leader's log was not applied: {e}")))
    }

    fn take_nonce(&self, nonce: &[u8]) -> Result<(), Status> {
        let n: [u8; 32] = nonce
            .try_into()
            .map_err(|_| Status::unauthenticated("nonce must be 32 bytes"))?;
        let mut map = self.nonces.lock();
        map.retain(|_, t| t.elapsed() < NONCE_TTL);
        map.remove(&n).map(|_| ()).ok_or_else(|| {
            Status::unauthenticated("unknown or expired challenge; ask for a new one")
        })
    }

    /// Checks that a request is signed by a reader of the chain over `digest`; the reader's
    /// key id.
    fn check_reader(
        &self,
        p: &Partition,
        chain: ChainId,
        (nonce, key, sig): (&[u8], &[u8], &[u8]),
        digest: &[u8; 32],
    ) -> Result<ate::KeyId, Status> {
        let role = (
            ate::RootAuthority::can_read as fn(&_, &_) -> bool,
            "a reader",
        );
        self.check_proof(p, chain, nonce, key, sig, digest, role)
    }

    /// Checks a signed proof over a one-time challenge: the nonce is ours and fresh, the
    /// signature by `key` over `digest` verifies, and `key` holds `role` in the chain's root
    /// authority (NOT_FOUND without the chain, PERMISSION_DENIED without the role). Returns the
    /// key's id.
    #[allow(clippy::too_many_arguments)] // the proof's parts, as they come in a request
    fn check_proof(
        &self,
        p: &Partition,
        chain: ChainId,
        nonce: &[u8],
        key: &[u8],
        sig: &[u8],
        digest: &[u8; 32],
        role: (fn(&ate::RootAuthority, &ate::KeyId) -> bool, &str),
    ) -> Result<ate::KeyId, Status> {
        self.take_nonce(nonce)?;
        let key = PublicKey(
            key.try_into()
                .map_err(|_| Status::unauthenticated("key must be 32 bytes"))?,
        );
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| Status::unauthenticated("signature must be 64 bytes"))?;
        key.verify(digest, &sig)
            .map_err(|_| Status::unauthenticated("the signature does not verify"))?;
        let (holds, what) = role;
        let allowed = p.sm.with_chain(&chain, |c| {
            ate::validate::ChainState::root(&c.view).is_some_and(|r| holds(r, &key.id()))
        });
        match allowed {
            None => Err(Status::not_found(format!("no chain {chain}"))),
            Some(false) => Err(Status::permission_denied(format!(
                "not {what} of the chain"
            ))),
            Some(true) => Ok(key.id()),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SubscribeEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;
/// A streamed transaction's proposal, owning what it needs (it runs in a task of its own).
type StreamedProposal = Pin<Box<dyn Future<Output = Result<u64, Status>> + Send>>;
type CommitResults = Pin<Box<dyn Stream<Item = Result<CommitResult, Status>> + Send>>;

/// A streamed transaction's answer: given when it was proposed (a refusal, or the Raft core
/// answered at once), or coming from its proposal, which runs on in a task of its own while
/// the stream reads on.
enum StreamAnswer {
    Given(Option<Result<u64, Status>>),
    Coming(tokio::task::JoinHandle<Result<u64, Status>>),
}

impl StreamAnswer {
    /// The answer (cancel-safe: a given one is taken on the first poll, a task's handle is
    /// only borrowed).
    async fn take(&mut self) -> Result<u64, Status> {
        match self {
            Self::Given(r) => r
                .take()
                .unwrap_or_else(|| Err(Status::internal("an answer was taken twice"))),
            Self::Coming(task) => task
                .await
                .unwrap_or_else(|e| Err(Status::internal(format!("proposal failed: {e}")))),
        }
    }
}

/// Bytes per FetchSnapshot message (well below tonic's 4 MiB message bound).
const SNAPSHOT_CHUNK: u64 = 1 << 20;

/// Sends a chain's snapshot image in chunks; stops when the client goes away.
fn send_section(
    section: crate::state_machine::ChainSection,
    out: tokio::sync::mpsc::Sender<Result<SnapshotChunk, Status>>,
) {
    use ate::storage::StorageFile;
    let total = section.image.byte_len();
    let mut pos = 0u64;
    while pos < total {
        let n = SNAPSHOT_CHUNK.min(total - pos);
        let mut data = vec![0u8; n as usize];
        let msg = match section.image.read_at(&mut data, pos) {
            Ok(()) => Ok(SnapshotChunk {
                index: section.index,
                total_bytes: total,
                data,
            }),
            Err(e) => Err(Status::internal(format!("reading the snapshot: {e}"))),
        };
        let failed = msg.is_err();
        if out.blocking_send(msg).is_err() || failed {
            return;
        }
        pos += n;
    }
}

#[tonic::async_trait]
impl Chains for Api {
    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<CommitReply>, Status> {
        let req = req.into_inner();
        let chain = chain_id(&req.chain)?;
        let p = self.node.partition(&chain);
        self.precheck(p, chain, &req.genesis)?;
        let index = self
            .propose(
                p,
                Command::Create {
                    chain: chain.0,
                    quota: req.quota_bytes,
                    tx: req.genesis.into(),
                },
            )
            .await?;
        Ok(Response::new(CommitReply { index }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteReply>, Status> {
        let req = req.into_inner();
        let chain = chain_id(&req.chain)?;
        let proof = (&req.nonce[..], &req.owner_key[..], &req.signature[..]);
        let digest = ate::remote::delete_digest(&chain, &req.nonce);
        self.as_owner(chain, proof, &digest, Command::Delete { chain: chain.0 })
            .await?;
        Ok(Response::new(DeleteReply {}))
    }

    async fn set_quota(
        &self,
        req: Request<SetQuotaRequest>,
    ) -> Result<Response<SetQuotaReply>, Status> {
        let req = req.into_inner();
        let chain = chain_id(&req.chain)?;
        let proof = (&req.nonce[..], &req.owner_key[..], &req.signature[..]);
        let quota = req.quota_bytes;
        let digest = ate::remote::quota_digest(&chain, &req.nonce, quota);
        let cmd = Command::SetQuota {
            chain: chain.0,
            quota,
        };
        self.as_owner(chain, proof, &digest, cmd).await?;
        // Read after the apply: what the chain holds under its new quota.
        let p = self.node.partition(&chain);
        let used_bytes = p.sm.with_chain(&chain, |c| c.used()).unwrap_or(0);
        Ok(Response::new(SetQuotaReply { used_bytes }))
    }

    async fn compact(
        &self,
        req: Request<CompactRequest>,
    ) -> Result<Response<CompactReply>, Status> {
        let req = req.into_inner();
        let chain = chain_id(&req.chain)?;
        let proof = (&req.nonce[..], &req.owner_key[..], &req.signature[..]);
        let digest = ate::remote::compact_digest(&chain, &req.nonce);
        let cmd = Command::Compact { chain: chain.0 };
        self.as_owner(chain, proof, &digest, cmd).await?;
        // The entry's index is not in the outcome; the applied index is at or past it.
        let p = self.node.partition(&chain);
        let log_index = p.sm.compact_past();
        Ok(Response::new(CompactReply { log_index }))
    }

    async fn commit(&self, req: Request<CommitRequest>) -> Result<Response<CommitReply>, Status> {
        let req = req.into_inner();
        let chain = chain_id(&req.chain)?;
        let session = session_of(&req.session)?;
        let p = self.node.partition(&chain);
        let hash = self.precheck(p, chain, &req.tx)?;
        let cmd = commit_command(chain, req.tx, hash, session);
        let index = self.propose(p, cmd).await?;
        Ok(Response::new(CommitReply { index }))
    }

    async fn commit_batch(
        &self,
        req: Request<CommitBatchRequest>,
    ) -> Result<Response<CommitBatchReply>, Status> {
        let req = req.into_inner();
        let chain = chain_id(&req.chain)?;
        if req.txs.is_empty() || req.txs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds 1 to {MAX_BATCH} transactions, not {}",
                req.txs.len()
            )));
        }
        let session = session_of(&req.session)?;
        let p = self.node.partition(&chain);
        let results = self.propose_in_order(p, chain, req.txs, session).await;
        // Not the leader, or no quorum: the whole call fails and the client retries it (the
        // commits that did land are deduplicated then).
        if let Some(Err(s)) = results.iter().find(|r| {
            r.as_ref()
                .is_err_and(|s| matches!(s.code(), Code::Unavailable))
        }) {
            return Err(s.clone());
        }
        let results = results.into_iter().map(commit_result).collect();
        Ok(Response::new(CommitBatchReply { results }))
    }

    type CommitStreamStream = CommitResults;

    async fn commit_stream(
        &self,
        req: Request<tonic::Streaming<CommitRequest>>,
    ) -> Result<Response<CommitResults>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("a commit stream without a transaction"))?;
        let chain = chain_id(&first.chain)?;
        let p = self.node.partition(&chain);
        if p.stopped().is_some() {
            return Err(crate::subscribe::stopped_here(p));
        }
        let leader = p.leader();
        if leader != Some(self.node.config.id) {
            return Err(self.redirect(p, leader));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_DEPTH);
        tokio::spawn(self.clone().serve_commit_stream(chain, first, inbound, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn challenge(
        &self,
        _req: Request<ChallengeRequest>,
    ) -> Result<Response<ChallengeReply>, Status> {
        let nonce: [u8; 32] = rand::random();
        let mut map = self.nonces.lock();
        map.retain(|_, t| t.elapsed() < NONCE_TTL);
        if map.len() > 100_000 {
            return Err(Status::resource_exhausted("too many open challenges"));
        }
        map.insert(nonce, Instant::now());
        Ok(Response::new(ChallengeReply {
            nonce: nonce.to_vec(),
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = req.into_inner();
        let chain = chain_id(&req.chain)?;
        let session = session_of(&req.session)?;
        let p = self.node.partition(&chain).clone();
        if p.stopped().is_some() {
            return Err(crate::subscribe::stopped_here(&p));
        }
        let proof = (&req.nonce[..], &req.reader_key[..], &req.signature[..]);
        let digest = ate::remote::subscribe_digest(&chain, &req.nonce, req.from_index);
        self.known_chain(&p, chain).await?;
        let reader = self.check_reader(&p, chain, proof, &digest)?;
        let from = req.from_index.max(1);
        // u64::MAX: a client only asking whether its key reads the chain.
        if from != u64::MAX {
            let genesis = genesis_of(&req.genesis)?;
            self.refuse_made_again(&p, chain, from, genesis).await?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(crate::subscribe::feed(p, chain, from, session, reader, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type FetchSnapshotStream = ChunkStream;

    async fn fetch_snapshot(
        &self,
        req: Request<FetchSnapshotRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let req = req.into_inner();
        let chain = chain_id(&req.chain)?;
        let p = self.node.partition(&chain);
        let proof = (&req.nonce[..], &req.reader_key[..], &req.signature[..]);
        self.known_chain(p, chain).await?;
        self.check_reader(
            p,
            chain,
            proof,
            &ate::remote::snapshot_digest(&chain, &req.nonce),
        )?;
        let section =
            p.sm.chain_section(&chain)
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| {
                    Status::failed_precondition(
                        "no snapshot holds this chain yet: subscribe from index 1",
                    )
                })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || send_section(section, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn barrier(&self, req: Request<ChainRef>) -> Result<Response<BarrierReply>, Status> {
        let chain = chain_id(&req.into_inner().chain)?;
        let p = self.node.partition(&chain);
        self.linearize(p).await?;
        let index =
            p.sm.with_chain(&chain, |c| c.index)
                .ok_or_else(|| Status::not_found(format!("no chain {chain}")))?;
        Ok(Response::new(BarrierReply { index }))
    }

    async fn info(&self, req: Request<ChainRef>) -> Result<Response<InfoReply>, Status> {
        let chain = chain_id(&req.into_inner().chain)?;
        let p = self.node.partition(&chain);
        self.linearize(p).await?;
        let leader = p.leader().unwrap_or(0);
        p.sm.with_chain(&chain, |c| InfoReply {
            index: c.index,
            used_bytes: c.used(),
            quota_bytes: c.quota,
            records: c.view.counts().1 as u64,
            partition: p.id,
            leader,
            first_index: c.first_index(),
            subscribers: p.subscribers.count(&chain),
            genesis: c.genesis.map_or_else(Vec::new, |h| h.0.to_vec()),
        })
        .map(Response::new)
        .ok_or_else(|| Status::not_found(format!("no chain {chain}")))
    }

    async fn subscribers(
        &self,
        req: Request<ChainRef>,
    ) -> Result<Response<SubscribersReply>, Status> {
        let chain = chain_id(&req.into_inner().chain)?;
        let p = self.node.partition(&chain);
        self.known_chain(p, chain).await?;
        if p.sm.with_chain(&chain, |_| ()).is_none() {
            return Err(Status::not_found(format!("no chain {chain}")));
        }
        let n = crate::in_use::count(&self.node, p, chain).await;
        Ok(Response::new(SubscribersReply {
            total: n.total,
            unanswered: n.unanswered,
        }))
    }
}
