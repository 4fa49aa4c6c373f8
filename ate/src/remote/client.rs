//! A client of a chain-server cluster. It finds the leader of a chain's partition (following
//! redirects), retries with backoff across replicas while the cluster elects, and reports
//! [`RemoteError::NoQuorum`] once the deadline passes without a leader. Subscriptions resume
//! from the last index delivered after any disconnect.

use super::pb::chain::chains_client::ChainsClient;
use super::pb::chain::{
    ChainRef, ChallengeRequest, CommitBatchRequest, CommitRequest, CompactRequest, CreateRequest,
    DeleteRequest, FetchSnapshotRequest, InfoReply, SetQuotaRequest, SubscribeEvent,
    SubscribeRequest, SubscribersReply,
};
use crate::crypto::SigningKey;
use crate::ids::{ChainId, TxHash};
use parking_lot::Mutex;
use prost::bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// Metadata key the server uses to name the leader on a redirect.
pub const LEADER_HEADER: &str = "x-atefs-leader";
/// The name every chain-server certificate carries (clients ask for it whatever they dial).
pub const SERVER_NAME: &str = "atefs-chain-server";
/// The longest one attempt may take before the client tries another replica.
const ATTEMPT: Duration = Duration::from_secs(6);
/// Transactions a commit pipe has in flight (the server's stream depth is 8 as well).
const PIPE_DEPTH: usize = 8;
/// How often an idle connection is pinged, and how long a ping may go unanswered before the
/// connection counts as dead. Without it a replica that froze (a stalled VM, a hung disk) or
/// a network that started dropping packets left a subscription waiting on a silent stream
/// until TCP gave up, a quarter of an hour; a unary call has its attempt timeout, a stream
/// has nothing else.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// The largest message exchanged.
const MAX_MESSAGE: usize = crate::tx::MAX_TX_BYTES + (1 << 20);

/// How to reach a cluster.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// API addresses (host:port) of some or all replicas.
    pub endpoints: Vec<String>,
    /// The cluster CA (PEM); None means plaintext.
    pub ca_pem: Option<Vec<u8>>,
    /// How long a call keeps retrying before it gives up.
    pub deadline: Duration,
}

/// Why a cluster's CA certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The file named could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Neither a CA nor plaintext was asked for.
    #[error("give --ca FILE (the cluster's CA certificate), or --insecure-plaintext")]
    Missing,
}

impl RemoteOptions {
    /// Options for `endpoints` with the CA in the file `ca` (PEM), or none with
    /// `insecure_plaintext`: the choice every command-line client offers. A call keeps
    /// retrying for 30 s.
    pub fn from_flags(
        endpoints: Vec<String>,
        ca: Option<&std::path::Path>,
        insecure_plaintext: bool,
    ) -> Result<Self, CaError> {
        let ca_pem = match (ca, insecure_plaintext) {
            (Some(p), _) => Some(std::fs::read(p).map_err(|source| CaError::Read {
                path: p.display().to_string(),
                source,
            })?),
            (None, true) => None,
            (None, false) => return Err(CaError::Missing),
        };
        Ok(Self {
            endpoints,
            ca_pem,
            deadline: Duration::from_secs(30),
        })
    }
}

/// Why a remote call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RemoteError {
    /// No replica could name a leader before the deadline: the cluster has no quorum (or is
    /// unreachable).
    #[error("no quorum: the cluster did not commit within {0:?} ({1})")]
    NoQuorum(Duration, String),
    /// The server refused the request (validation, a precondition, authority, quota, ...).
    #[error("refused ({0:?}): {1}")]
    Refused(Code, String),
    /// A connection could not be set up.
    #[error("endpoint {0}: {1}")]
    Endpoint(String, String),
}

impl RemoteError {
    /// True when a precondition failed (a racing writer won).
    pub fn is_precondition(&self) -> bool {
        matches!(self, RemoteError::Refused(Code::FailedPrecondition, _))
    }

    /// True when the cluster has no such chain.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RemoteError::Refused(Code::NotFound, _))
    }
}

/// A client. Cheap to share (`Arc`); calls may run concurrently.
#[derive(Debug)]
pub struct RemoteClient {
    opts: RemoteOptions,
    channels: Mutex<HashMap<String, Channel>>,
    /// Leader API address by chain (the partition's leader, as last learned).
    leaders: Mutex<HashMap<ChainId, String>>,
}

/// Outcome of one attempt.
enum Attempt<T> {
    Done(T),
    /// Try this address next.
    Redirect(String),
    /// Try another replica after a pause.
    Retry(String),
}

fn classify<T>(r: Result<T, Status>) -> Result<Attempt<T>, RemoteError> {
    match r {
        Ok(v) => Ok(Attempt::Done(v)),
        Err(s) => {
            if let Some(l) = s
                .metadata()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                return Ok(Attempt::Redirect(l.to_string()));
            }
            match s.code() {
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                    Ok(Attempt::Retry(s.message().to_string()))
                }
                Code::Internal if s.message().contains("transport") => {
                    Ok(Attempt::Retry(s.message().to_string()))
                }
                code => Err(RemoteError::Refused(code, s.message().to_string())),
            }
        }
    }
}

impl RemoteClient {
    /// A client of the cluster at `opts.endpoints` (connections are made on first use).
    pub fn new(opts: RemoteOptions) -> Result<Self, RemoteError> {
        if opts.endpoints.is_empty() {
            return Err(RemoteError::Endpoint(
                String::new(),
                "no endpoints given".into(),
            ));
        }
        Ok(Self {
            opts,
            channels: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, RemoteError> {
        let mut map = self.channels.lock();
        let ch = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let err =
                    |e: tonic::transport::Error| RemoteError::Endpoint(addr.into(), e.to_string());
                let scheme = if self.opts.ca_pem.is_some() {
                    "https"
                } else {
                    "http"
                };
                let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .map_err(err)?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEPALIVE)
                    .keep_alive_timeout(KEEPALIVE)
                    .keep_alive_while_idle(true);
                if let Some(ca) = &self.opts.ca_pem {
                    ep = ep
                        .tls_config(
                            ClientTlsConfig::new()
                                .domain_name(SERVER_NAME)
                                .ca_certificate(Certificate::from_pem(ca)),
                        )
                        .map_err(err)?;
                }
                let c = ep.connect_lazy();
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(ch)
    }

    /// Runs `call` against the chain's leader, following redirects and retrying across
    /// replicas with backoff until the deadline.
    async fn with_leader<T, F, Fut>(&self, chain: ChainId, mut call: F) -> Result<T, RemoteError>
    where
        F: FnMut(ChainsClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.with_leader_on(chain, |ch| {
            call(
                ChainsClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
        })
        .await
    }

    /// [`Self::with_leader`] with the leader's channel itself.
    async fn with_leader_on<T, F, Fut>(&self, chain: ChainId, mut call: F) -> Result<T, RemoteError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut next = 0usize;
        let mut addr = self
            .leaders
            .lock()
            .get(&chain)
            .cloned()
            .unwrap_or_else(|| self.opts.endpoints[0].clone());
        let mut last_error = String::from("no answer yet");
        loop {
            if started.elapsed() > self.opts.deadline {
                return Err(RemoteError::NoQuorum(self.opts.deadline, last_error));
            }
            let client = self.channel(&addr)?;
            // One attempt never outlives the deadline, nor hangs on a replica that went quiet.
            let left = self.opts.deadline.saturating_sub(started.elapsed());
            let answer = tokio::time::timeout(left.min(ATTEMPT), call(client))
                .await
                .unwrap_or_else(|_| Err(Status::unavailable(format!("no answer from {addr}"))));
            match classify(answer)? {
                Attempt::Done(v) => {
                    self.leaders.lock().insert(chain, addr);
                    return Ok(v);
                }
                Attempt::Redirect(leader) => {
                    last_error = format!("redirected to {leader}");
                    if leader == addr {
                        // A stale leader naming itself: give it a moment.
                        tokio::time::sleep(backoff).await;
                    }
                    addr = leader;
                    continue;
                }
                Attempt::Retry(why) => {
                    last_error = why;
                    self.leaders.lock().remove(&chain);
                    next = (next + 1) % self.opts.endpoints.len();
                    addr = self.opts.endpoints[next].clone();
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// How this client reaches its cluster (for another client of the same cluster).
    pub fn options(&self) -> &RemoteOptions {
        &self.opts
    }

    /// Creates a chain with `genesis` (which sets its root authority) and a quota.
    pub async fn create(
        &self,
        chain: ChainId,
        quota: u64,
        genesis: Vec<u8>,
    ) -> Result<u64, RemoteError> {
        self.with_leader(chain, |mut c| {
            let req = CreateRequest {
                chain: chain.0.to_vec(),
                quota_bytes: quota,
                genesis: genesis.clone(),
            };
            async move { c.create(req).await.map(|r| r.into_inner().index) }
        })
        .await
    }

    /// Commits an encoded, signed transaction; returns its chain index once a majority holds
    /// it. A retry after a lost answer returns the same index (the server deduplicates).
    pub async fn commit(&self, chain: ChainId, tx: Vec<u8>) -> Result<u64, RemoteError> {
        self.commit_from(chain, tx.into(), None).await
    }

    /// [`Self::commit`] in a writer session (see [`Session`]). The bytes are shared, so a
    /// retry does not copy them again.
    pub async fn commit_from(
        &self,
        chain: ChainId,
        tx: Bytes,
        session: Option<Session>,
    ) -> Result<u64, RemoteError> {
        let session = Session::wire(session);
        self.with_leader(chain, |mut c| {
            let req = CommitRequest {
                chain: chain.0.to_vec(),
                tx: tx.clone(),
                session: session.clone(),
            };
            async move { c.commit(req).await.map(|r| r.into_inner().index) }
        })
        .await
    }

    /// Commits transactions in their order in one round trip (see the CommitBatch RPC); one
    /// result each. Fails as a whole only when no leader took the batch before the deadline.
    pub async fn commit_batch(
        &self,
        chain: ChainId,
        txs: Vec<Vec<u8>>,
    ) -> Result<Vec<Result<u64, RemoteError>>, RemoteError> {
        let txs = txs.into_iter().map(Into::into).collect();
        self.commit_batch_from(chain, txs, None).await
    }

    /// [`Self::commit_batch`] in a writer session (see [`Session`]).
    pub async fn commit_batch_from(
        &self,
        chain: ChainId,
        txs: Vec<Bytes>,
        session: Option<Session>,
    ) -> Result<Vec<Result<u64, RemoteError>>, RemoteError> {
        let n = txs.len();
        let session = Session::wire(session);
        let results = self
            .with_leader(chain, |mut c| {
                let req = CommitBatchRequest {
                    chain: chain.0.to_vec(),
                    txs: txs.clone(),
                    session: session.clone(),
                };
                async move { c.commit_batch(req).await.map(|r| r.into_inner().results) }
            })
            .await?;
        if results.len() != n {
            return Err(RemoteError::Refused(
                Code::Internal,
                format!("{} results for {n} transactions", results.len()),
            ));
        }
        Ok(results
            .into_iter()
            .map(|r| match r.code {
                0 => Ok(r.index),
                code => Err(RemoteError::Refused(Code::from(code), r.message)),
            })
            .collect())
    }

    /// Commits the transactions `feed` gives, in its order, through a CommitStream at the
    /// chain's leader: up to `PIPE_DEPTH` (8) are in flight at once (one round trip of
    /// replication overlaps the next transaction's transfer), and `answer` gets each result
    /// in the same order. A broken stream (leader change, lost connection) is opened again at
    /// the leader with everything unanswered sent first, in order; the server deduplicates
    /// what had landed. Without progress for the deadline the unanswered ones fail. Returns
    /// when `feed` is closed and everything sent was answered.
    pub async fn commit_pipe<T>(
        &self,
        chain: ChainId,
        session: Option<Session>,
        mut feed: tokio::sync::mpsc::Receiver<(Bytes, T)>,
        mut answer: impl FnMut(T, Result<u64, RemoteError>),
    ) {
        let session = Session::wire(session);
        let request = |tx: &Bytes| CommitRequest {
            chain: chain.0.to_vec(),
            tx: tx.clone(),
            session: session.clone(),
        };
        let mut unanswered: VecDeque<(Bytes, T)> = VecDeque::new();
        let mut open = true;
        let mut stalled: Option<Instant> = None;
        loop {
            if unanswered.is_empty() {
                match feed.recv().await {
                    Some(item) => unanswered.push_back(item),
                    None => return,
                }
            }
            let opened = self
                .with_leader_on(chain, |ch| {
                    let (requests, rx) = tokio::sync::mpsc::channel(2 * PIPE_DEPTH);
                    for (tx, _) in &unanswered {
                        // Room for all: at most PIPE_DEPTH are unanswered.
                        let _ = requests.try_send(request(tx));
                    }
                    async move {
                        let answers = super::wire::commit_stream(ch, rx, MAX_MESSAGE).await?;
                        Ok((requests, answers))
                    }
                })
                .await;
            let (requests, mut answers) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    for (_, t) in unanswered.drain(..) {
                        answer(t, Err(e.clone()));
                    }
                    continue;
                }
            };
            loop {
                tokio::select! {
                    biased;
                    got = answers.message() => {
                        let Ok(Some(r)) = got else { break };
                        let Some((_, t)) = unanswered.pop_front() else { break };
                        stalled = None;
                        answer(t, match r.code {
                            0 => Ok(r.index),
                            code => Err(RemoteError::Refused(Code::from(code), r.message)),
                        });
                        if unanswered.is_empty() && !open {
                            return;
                        }
                    }
                    item = feed.recv(), if open && unanswered.len() < PIPE_DEPTH => match item {
                        Some((tx, t)) => {
                            let sent = requests.send(request(&tx)).await.is_ok();
                            unanswered.push_back((tx, t));
                            if !sent {
                                break;
                            }
                        }
                        None => {
                            open = false;
                            if unanswered.is_empty() {
                                return;
                            }
                        }
                    },
                }
            }
            // The stream broke with transactions unanswered: open another, unless there was
            // no progress for the deadline.
            if unanswered.is_empty() {
                stalled = None;
                continue;
            }
            let since = *stalled.get_or_insert_with(Instant::now);
            if since.elapsed() > self.opts.deadline {
                let e = RemoteError::NoQuorum(
                    self.opts.deadline,
                    "the commit stream kept breaking".into(),
                );
                for (_, t) in unanswered.drain(..) {
                    answer(t, Err(e.clone()));
                }
                stalled = None;
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Size, quota and indexes of a chain, as the leader of its partition knows them.
    pub async fn info(&self, chain: ChainId) -> Result<InfoReply, RemoteError> {
        self.with_leader(chain, |mut c| {
            let req = ChainRef {
                chain: chain.0.to_vec(),
            };
            async move { c.info(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// How many subscriptions of the chain the replicas of its partition serve between them
    /// (each mount holds one), and which replicas did not say.
    pub async fn subscribers(&self, chain: ChainId) -> Result<SubscribersReply, RemoteError> {
        self.with_leader(chain, |mut c| {
            let req = ChainRef {
                chain: chain.0.to_vec(),
            };
            async move { c.subscribers(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Deletes a chain, proving `owner` is one of its owners.
    pub async fn delete(&self, chain: ChainId, owner: &SigningKey) -> Result<(), RemoteError> {
        self.with_leader(chain, |mut c| async move {
            let (nonce, owner_key, signature) =
                prove(&mut c, owner, |n| super::delete_digest(&chain, n)).await?;
            let req = DeleteRequest {
                chain: chain.0.to_vec(),
                nonce,
                owner_key,
                signature,
            };
            c.delete(req).await.map(|_| ())
        })
        .await
    }

    /// Sets a chain's quota, proving `owner` is one of its owners; returns the bytes the
    /// chain held then. A quota below them is refused (OUT_OF_RANGE).
    pub async fn set_quota(
        &self,
        chain: ChainId,
        quota: u64,
        owner: &SigningKey,
    ) -> Result<u64, RemoteError> {
        self.with_leader(chain, |mut c| async move {
            let (nonce, owner_key, signature) =
                prove(&mut c, owner, |n| super::quota_digest(&chain, n, quota)).await?;
            let req = SetQuotaRequest {
                chain: chain.0.to_vec(),
                quota_bytes: quota,
                nonce,
                owner_key,
                signature,
            };
            c.set_quota(req).await.map(|r| r.into_inner().used_bytes)
        })
        .await
    }

    /// Asks every replica of `chain`'s partition to snapshot it and drop the log up to now
    /// (proving `owner`); returns the partition's log index of the request. The replicas do
    /// it within about a second each (their check runs once a second).
    pub async fn compact(&self, chain: ChainId, owner: &SigningKey) -> Result<u64, RemoteError> {
        self.with_leader(chain, |mut c| async move {
            let (nonce, owner_key, signature) =
                prove(&mut c, owner, |n| super::compact_digest(&chain, n)).await?;
            let req = CompactRequest {
                chain: chain.0.to_vec(),
                nonce,
                owner_key,
                signature,
            };
            c.compact(req).await.map(|r| r.into_inner().log_index)
        })
        .await
    }

    /// The chain's last index as of a linearizable read at the leader.
    pub async fn barrier(&self, chain: ChainId) -> Result<u64, RemoteError> {
        self.with_leader(chain, |mut c| {
            let req = ChainRef {
                chain: chain.0.to_vec(),
            };
            async move { c.barrier(req).await.map(|r| r.into_inner().index) }
        })
        .await
    }

    /// Downloads the chain's image in the cluster's latest snapshot (proving `reader` may
    /// read the chain) into `out`, an `ate` snapshot file (docs/format.md). Returns the chain
    /// index it covers up to. FAILED_PRECONDITION when no snapshot holds the chain yet.
    pub async fn fetch_snapshot(
        &self,
        chain: ChainId,
        reader: &SigningKey,
        out: &dyn crate::storage::StorageFile,
    ) -> Result<u64, RemoteError> {
        let mut stream = self
            .with_leader(chain, |mut c| async move {
                let (nonce, reader_key, signature) =
                    prove(&mut c, reader, |n| super::snapshot_digest(&chain, n)).await?;
                let req = FetchSnapshotRequest {
                    chain: chain.0.to_vec(),
                    nonce,
                    reader_key,
                    signature,
                };
                c.fetch_snapshot(req).await.map(|r| r.into_inner())
            })
            .await?;
        let io = |e: std::io::Error| RemoteError::Refused(Code::Internal, format!("cache: {e}"));
        let (mut pos, mut image) = (0u64, None);
        loop {
            let chunk = match stream.message().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(s) => return Err(RemoteError::Refused(s.code(), s.message().to_string())),
            };
            let (index, total) = *image.get_or_insert((chunk.index, chunk.total_bytes));
            if chunk.index != index || chunk.total_bytes != total {
                return Err(RemoteError::Refused(
                    Code::DataLoss,
                    "the snapshot changed while it was sent".into(),
                ));
            }
            out.write_at(&chunk.data, pos).map_err(io)?;
            pos += chunk.data.len() as u64;
        }
        match image {
            Some((index, total)) if total == pos => {
                out.sync_data().map_err(io)?;
                Ok(index)
            }
            _ => Err(RemoteError::Refused(
                Code::DataLoss,
                format!("the snapshot stream ended after {pos} bytes"),
            )),
        }
    }

    /// Opens a subscription from `from` (proving `reader` may read the chain); the returned
    /// stream reconnects and resumes by itself. With a `session`, the transactions committed
    /// in it come back as [`Event::Own`].
    pub fn subscribe(
        &self,
        chain: ChainId,
        from: u64,
        reader: SigningKey,
        session: Option<Session>,
    ) -> Subscription<'_> {
        Subscription {
            client: self,
            chain,
            next: from.max(1),
            reader,
            session,
            genesis: None,
            stream: None,
        }
    }

    /// Whether the chain takes a subscription proven with `key` (false: it refuses the key;
    /// no event is read).
    pub async fn can_read(&self, chain: ChainId, key: &SigningKey) -> Result<bool, RemoteError> {
        match self.open_stream(chain, u64::MAX, key, None, None).await {
            Ok(_) => Ok(true),
            Err(RemoteError::Refused(Code::PermissionDenied, _)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn open_stream(
        &self,
        chain: ChainId,
        from: u64,
        reader: &SigningKey,
        session: Option<Session>,
        genesis: Option<TxHash>,
    ) -> Result<tonic::Streaming<SubscribeEvent>, RemoteError> {
        let session = Session::wire(session);
        let genesis = genesis.map_or_else(Vec::new, |h| h.0.to_vec());
        self.with_leader(chain, |mut c| {
            let session = session.clone();
            let genesis = genesis.clone();
            async move {
                let (nonce, reader_key, signature) =
                    prove(&mut c, reader, |n| super::subscribe_digest(&chain, n, from)).await?;
                let req = SubscribeRequest {
                    chain: chain.0.to_vec(),
                    from_index: from,
                    nonce,
                    reader_key,
                    signature,
                    session,
                    genesis,
                };
                c.subscribe(req).await.map(|r| r.into_inner())
            }
        })
        .await
    }
}

/// Asks the server for a challenge and signs `digest(nonce)` with `key`: the proof that
/// Delete, Subscribe and FetchSnapshot carry. Returns (nonce, key, signature).
async fn prove(
    c: &mut ChainsClient<Channel>,
    key: &SigningKey,
    digest: impl FnOnce(&[u8]) -> [u8; 32],
) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), Status> {
    let nonce = c.challenge(ChallengeRequest {}).await?.into_inner().nonce;
    let signature = key.sign(&digest(&nonce)).to_vec();
    Ok((nonce, key.public().0.to_vec(), signature))
}

/// A resuming subscription.
#[derive(Debug)]
pub struct Subscription<'a> {
    client: &'a RemoteClient,
    chain: ChainId,
    next: u64,
    reader: SigningKey,
    session: Option<Session>,
    genesis: Option<TxHash>,
    stream: Option<tonic::Streaming<SubscribeEvent>>,
}

/// A writer session: 16 random bytes a client sends with its commits and its subscription,
/// so that its own transactions come back as their hash instead of their bytes (it holds
/// them; on a cluster's write path that is a third of the leader's sending and all of the
/// writer's receiving).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session(pub [u8; 16]);

impl Session {
    /// A fresh random session.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// As the protocol sends it: 16 bytes, or none (empty).
    fn wire(session: Option<Self>) -> Vec<u8> {
        session.map_or_else(Vec::new, |s| s.0.to_vec())
    }
}

/// What a subscription delivers at an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An encoded transaction.
    Tx(Bytes),
    /// A transaction of the subscriber's own session, by its hash.
    Own(TxHash),
}

impl Subscription<'_> {
    /// Only of the chain whose genesis hashes to `genesis` ([`RemoteClient::info`]'s
    /// `genesis`; None: any): a chain of the same id made again since is refused with
    /// `FAILED_PRECONDITION` instead of delivered after what the subscriber read.
    pub fn of_genesis(mut self, genesis: Option<TxHash>) -> Self {
        self.genesis = genesis;
        self
    }

    /// The next transaction as (chain index, encoded transaction); reconnects as needed.
    /// Only for subscriptions without a session.
    pub async fn next(&mut self) -> Result<(u64, Vec<u8>), RemoteError> {
        match self.next_event().await? {
            (index, Event::Tx(tx)) => Ok((index, Vec::from(tx))),
            (index, Event::Own(_)) => Err(RemoteError::Refused(
                Code::Internal,
                format!("transaction {index} came back as the subscriber's own"),
            )),
        }
    }

    /// Opens the stream unless it is open; true when it opened one. (`next_event` opens it
    /// too: this tells a caller when the cluster is reachable again before any event comes.)
    pub async fn connect(&mut self) -> Result<bool, RemoteError> {
        if self.stream.is_some() {
            return Ok(false);
        }
        let s = self
            .client
            .open_stream(
                self.chain,
                self.next,
                &self.reader,
                self.session,
                self.genesis,
            )
            .await?;
        self.stream = Some(s);
        Ok(true)
    }

    /// The next event as (chain index, event); reconnects as needed.
    pub async fn next_event(&mut self) -> Result<(u64, Event), RemoteError> {
        loop {
            self.connect().await?;
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.message().await {
                Ok(Some(ev)) if ev.index == self.next => {
                    self.next += 1;
                    if ev.own_hash.is_empty() {
                        return Ok((ev.index, Event::Tx(ev.tx)));
                    }
                    let hash = <[u8; 32]>::try_from(&ev.own_hash[..]).map_err(|_| {
                        RemoteError::Refused(
                            Code::Internal,
                            format!("own_hash of {} bytes", ev.own_hash.len()),
                        )
                    })?;
                    return Ok((ev.index, Event::Own(TxHash(hash))));
                }
                // Already delivered before a reconnect.
                Ok(Some(ev)) if ev.index < self.next => continue,
                Ok(Some(ev)) => {
                    return Err(RemoteError::Refused(
                        Code::DataLoss,
                        format!("subscription skipped from {} to {}", self.next, ev.index),
                    ))
                }
                Ok(None) => self.stream = None,
                // A refusal ends the subscription; anything else reconnects (the next open
                // finds the leader again).
                Err(s) => {
                    self.stream = None;
                    classify::<()>(Err(s))?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
