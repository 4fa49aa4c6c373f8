//! A local cache of a remote chain: an [`Upstream`] that commits through a [`RemoteClient`],
//! and a follower thread that feeds the cache the chain's transactions in order.

use super::client::{RemoteClient, RemoteError};
use crate::chain::{Chain, ChainError, ChainOptions, PendingCommit};
use crate::crypto::SigningKey;
use crate::ids::ChainId;
use crate::storage::Storage;
use crate::tx::Transaction;
use crate::upstream::{Upstream, UpstreamError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tonic::Code;

/// Commits through the cluster, blocking the calling thread.
#[derive(Debug)]
struct GrpcUpstream {
    client: Arc<RemoteClient>,
    rt: tokio::runtime::Handle,
    chain: ChainId,
    /// Set when the follower stopped: commits would never show up locally, so they fail at
    /// once with the reason instead of timing out.
    broken: Arc<parking_lot::Mutex<Option<String>>>,
}

impl GrpcUpstream {
    fn check(&self) -> Result<(), UpstreamError> {
        match &*self.broken.lock() {
            Some(why) => Err(UpstreamError::Failed(format!(
                "the local cache stopped following the chain: {why}"
            ))),
            None => Ok(()),
        }
    }
}

fn upstream_error(e: RemoteError) -> UpstreamError {
    match e {
        RemoteError::Refused(Code::FailedPrecondition, m) => UpstreamError::Precondition(m),
        RemoteError::Refused(Code::PermissionDenied | Code::Unauthenticated, m) => {
            UpstreamError::Denied(m)
        }
        RemoteError::Refused(Code::ResourceExhausted, m) => UpstreamError::Quota(m),
        other => UpstreamError::Failed(other.to_string()),
    }
}

impl Upstream for GrpcUpstream {
    fn commit(&self, tx: &[u8]) -> Result<u64, UpstreamError> {
        self.check()?;
        self.rt
            .block_on(self.client.commit(self.chain, tx.to_vec()))
            .map_err(upstream_error)
    }
    fn commit_batch(&self, txs: &[&[u8]]) -> Vec<Result<u64, UpstreamError>> {
        let all = self.check().and_then(|()| {
            let owned = txs.iter().map(|t| t.to_vec()).collect();
            self.rt
                .block_on(self.client.commit_batch(self.chain, owned))
                .map_err(upstream_error)
        });
        match all {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map_err(upstream_error))
                .collect(),
            Err(e) => txs.iter().map(|_| Err(e.clone())).collect(),
        }
    }
    fn barrier(&self) -> Result<u64, UpstreamError> {
        self.check()?;
        self.rt
            .block_on(self.client.barrier(self.chain))
            .map_err(upstream_error)
    }
}

/// Why a remote chain could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The cluster said no, or could not be reached.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The local cache failed.
    #[error("local cache: {0}")]
    Cache(#[from] ChainError),
    /// The async runtime could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// An open remote chain; the follower stops when this drops.
#[derive(Debug)]
pub struct RemoteChain {
    /// The local cache; commits on it go to the cluster.
    pub chain: Chain,
    stop: Arc<AtomicBool>,
    follower: Option<std::thread::JoinHandle<()>>,
    _rt: Arc<tokio::runtime::Runtime>,
}

impl Drop for RemoteChain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The follower may be parked in a stream read; it notices at the next event or its
        // reconnect. Detach rather than block an unmount on the network.
        drop(self.follower.take());
    }
}

/// Opens `chain` on the cluster `client` talks to, caching it in `cache`. With `create`
/// (quota, owner), a chain that does not exist yet is created with `owner` as its single
/// owner. Returns once the cache holds everything the cluster had when this was called.
pub fn open_remote(
    client: RemoteClient,
    chain: ChainId,
    reader: SigningKey,
    cache: Arc<dyn Storage>,
    create: Option<(u64, SigningKey)>,
) -> Result<RemoteChain, ReplicaError> {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ate-remote")
            .enable_all()
            .build()
            .map_err(ReplicaError::Runtime)?,
    );
    let client = Arc::new(client);
    match rt.block_on(client.barrier(chain)) {
        Ok(_) => {}
        Err(RemoteError::Refused(Code::NotFound, _)) if create.is_some() => {
            if let Some((quota, owner)) = &create {
                let mut tx = Transaction::new(chain, owner.public());
                tx.ops.push(crate::tx::Op::SetRoot(
                    crate::authority::RootAuthority::single_owner(owner.public()),
                ));
                rt.block_on(client.create(chain, *quota, tx.sign(owner).encode()))?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    let broken = Arc::new(parking_lot::Mutex::new(None));
    let upstream = Arc::new(GrpcUpstream {
        client: client.clone(),
        rt: rt.handle().clone(),
        chain,
        broken: broken.clone(),
    });
    let (local, _) = Chain::open_upstream(
        cache,
        chain,
        ChainOptions {
            // The cluster holds the chain durably; the cache is fdatasynced now and then,
            // and a crash leaves a prefix the follower resumes from.
            deferred_sync: Some(std::time::Duration::from_secs(1)),
            ..ChainOptions::default()
        },
        upstream,
        |_, _| {},
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (local, stop, client, rt2) = (local.clone(), stop.clone(), client.clone(), rt.clone());
        std::thread::Builder::new()
            .name("ate-follower".into())
            .spawn(move || {
                if let Err(why) = rt2.block_on(follow(&client, &local, reader, &stop)) {
                    tracing::error!(error = %why, "the cache stopped following the chain; commits fail from now on");
                    *broken.lock() = Some(why);
                }
            })
            .map_err(ReplicaError::Runtime)?
    };
    local.sync_upstream()?;
    Ok(RemoteChain {
        chain: local,
        stop,
        follower: Some(follower),
        _rt: rt,
    })
}

/// Feeds the cache until stopped. Appends are pipelined; each receipt's index is checked
/// against the upstream's, so a diverged cache stops loudly instead of serving wrong data.
/// Returns why it stopped, if not asked to.
async fn follow(
    client: &RemoteClient,
    local: &Chain,
    reader: SigningKey,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut sub = client.subscribe(local.id(), local.last_index() + 1, reader);
    let mut pending: std::collections::VecDeque<(u64, PendingCommit)> = Default::default();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (index, bytes) = match sub.next().await {
            Ok(ev) => ev,
            Err(e) => return Err(format!("the chain's subscription failed: {e}")),
        };
        let applied = Transaction::decode(&bytes)
            .map_err(|e| ChainError::Decode { index, source: e })
            .and_then(|tx| local.apply_upstream(tx));
        match applied {
            Ok(p) => pending.push_back((index, p)),
            Err(e) => return Err(format!("the cache refused transaction {index}: {e}")),
        }
        while pending.front().is_some_and(|(_, p)| p.is_done()) {
            let Some((want, p)) = pending.pop_front() else {
                break;
            };
            match p.wait() {
                Ok(r) if r.index == want => {}
                Ok(r) => {
                    return Err(format!(
                        "the cache diverged: transaction {want} landed at {}",
                        r.index
                    ))
                }
                Err(e) => return Err(format!("the cache refused transaction {want}: {e}")),
            }
        }
    }
}
