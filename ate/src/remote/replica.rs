//! A local cache of a remote chain: an [`Upstream`] that commits through a [`RemoteClient`],
//! and a follower thread (follower.rs) that feeds the cache the chain's transactions in order.

use super::client::{RemoteClient, RemoteError, RemoteOptions, Session};
use super::follower::{Follower, Lapse};
use crate::chain::{Chain, ChainError, ChainOptions};
use crate::crypto::SigningKey;
use crate::ids::ChainId;
use crate::redo::{LogError, LogOptions};
use crate::storage::Storage;
use crate::upstream::{stopped_error, Pipe, Upstream, UpstreamError};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tonic::Code;

/// Commits through the cluster, blocking the calling thread.
#[derive(Debug)]
struct GrpcUpstream {
    client: Arc<RemoteClient>,
    rt: tokio::runtime::Handle,
    chain: ChainId,
    /// Sent with every commit and the subscription: our transactions come back by hash.
    session: Session,
    /// Set while the follower is not following: commits would not show up locally, so they
    /// fail at once with the reason instead of timing out.
    lapse: Arc<Lapse>,
}

impl GrpcUpstream {
    fn check(&self) -> Result<(), UpstreamError> {
        stopped_error(self).map_or(Ok(()), Err)
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
    fn commit(&self, tx: Bytes) -> Result<u64, UpstreamError> {
        self.check()?;
        self.rt
            .block_on(self.client.commit_from(self.chain, tx, Some(self.session)))
            .map_err(upstream_error)
    }
    fn commit_batch(&self, txs: Vec<Bytes>) -> Vec<Result<u64, UpstreamError>> {
        let n = txs.len();
        let all = self.check().and_then(|()| {
            self.rt
                .block_on(
                    self.client
                        .commit_batch_from(self.chain, txs, Some(self.session)),
                )
                .map_err(upstream_error)
        });
        match all {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map_err(upstream_error))
                .collect(),
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }
    fn pipe(&self) -> Option<Pipe> {
        let (feed, rx) = tokio::sync::mpsc::channel::<(Bytes, ())>(1);
        let (answer, answers) = std::sync::mpsc::channel();
        let (client, chain, session) = (self.client.clone(), self.chain, self.session);
        self.rt.spawn(async move {
            client
                .commit_pipe(chain, Some(session), rx, |(), r| {
                    let _ = answer.send(r.map_err(upstream_error));
                })
                .await;
        });
        let send = Box::new(move |tx: Bytes| feed.blocking_send((tx, ())).is_ok());
        Some(Pipe { send, answers })
    }
    fn barrier(&self) -> Result<u64, UpstreamError> {
        self.check()?;
        self.rt
            .block_on(self.client.barrier(self.chain))
            .map_err(upstream_error)
    }
    fn stopped(&self) -> Option<String> {
        self.lapse.why()
    }
    fn returns_own_by_hash(&self) -> bool {
        true
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
    /// Installing a snapshot into the local cache failed.
    #[error("local cache: {op} {file}: {source}")]
    CacheIo {
        /// What was being done.
        op: &'static str,
        /// The file.
        file: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The cluster kept compacting past every snapshot this cache installed.
    #[error("the cluster compacted the chain past {0} snapshots in a row; try again")]
    CatchUp(u32),
}

/// Maps an I/O error of `op` on the cache's `file`.
pub(super) fn cache_io(
    op: &'static str,
    file: &str,
) -> impl FnOnce(std::io::Error) -> ReplicaError {
    let file = file.to_string();
    move |source| ReplicaError::CacheIo { op, file, source }
}

/// Snapshot installs tried before opening gives up (each one is the cluster's newest).
pub(super) const CATCH_UP_TRIES: u32 = 3;

/// Replaces the cache's files with the cluster's snapshot image of the chain: the image is
/// written and fdatasynced under a `.tmp` name (which a reopen discards) before the old
/// files go, so a crash leaves either the old cache, an empty one, or the new one.
fn install_snapshot(
    rt: &tokio::runtime::Runtime,
    client: &RemoteClient,
    chain: ChainId,
    reader: &SigningKey,
    cache: &Arc<dyn Storage>,
) -> Result<u64, ReplicaError> {
    let index = rt.block_on(fetch_image(client, chain, reader, cache))?;
    clear_cache(cache)?;
    let name = crate::redo::snapshot_name(index);
    cache
        .rename(IMAGE_TMP, &name)
        .map_err(cache_io("rename", IMAGE_TMP))?;
    cache.sync_dir().map_err(cache_io("sync", "."))?;
    Ok(index)
}

/// Where the cluster's image of the chain is downloaded in the cache (a reopen discards it).
pub(super) const IMAGE_TMP: &str = "snap-install.tmp";

/// Downloads the cluster's image of `chain` into a fresh, fdatasynced [`IMAGE_TMP`] of the
/// cache; returns the image's last index. Used at open ([`install_snapshot`]) and by a
/// running cache's follower (`Chain::install_image`).
pub(super) async fn fetch_image(
    client: &RemoteClient,
    chain: ChainId,
    reader: &SigningKey,
    cache: &Arc<dyn Storage>,
) -> Result<u64, ReplicaError> {
    let out = cache
        .open(IMAGE_TMP, true)
        .map_err(cache_io("create", IMAGE_TMP))?;
    out.truncate(0).map_err(cache_io("truncate", IMAGE_TMP))?;
    Ok(client.fetch_snapshot(chain, reader, out.as_ref()).await?)
}

/// Removes every log file (segments and snapshots) from the cache.
pub(super) fn clear_cache(cache: &Arc<dyn Storage>) -> Result<(), ReplicaError> {
    for name in cache.list().map_err(cache_io("list", "."))? {
        if crate::redo::parse_name(&name).is_some() {
            cache.remove(&name).map_err(cache_io("remove", &name))?;
        }
    }
    Ok(())
}

/// An open remote chain; the follower stops when this drops.
#[derive(Debug)]
pub struct RemoteChain {
    /// The local cache; commits on it go to the cluster.
    pub chain: Chain,
    /// The chain's quota when it was opened (what [`QuotaReader::read`] would have said).
    pub quota_at_open: u64,
    stop: Arc<AtomicBool>,
    follower: Option<std::thread::JoinHandle<()>>,
    lapse: Arc<Lapse>,
    pub(super) client: Arc<RemoteClient>,
    pub(super) rt: Arc<tokio::runtime::Runtime>,
}

impl RemoteChain {
    /// Why the cache is not following the chain now (its commits fail with this), if it is
    /// not: reconnecting to the cluster, or stopped for good.
    pub fn lapse(&self) -> Option<String> {
        self.lapse.why()
    }

    /// Waits until the cache follows the chain, at most `limit`; false if it still does not.
    pub fn wait_following(&self, limit: std::time::Duration) -> bool {
        self.lapse.wait(limit)
    }

    /// A handle that reads the chain's quota from the cluster (its owner may change it while
    /// the chain is open), from any thread outside an async runtime.
    pub fn quota_reader(&self) -> QuotaReader {
        QuotaReader {
            client: self.client.clone(),
            rt: self.rt.clone(),
            chain: self.chain.id(),
        }
    }
}

/// See [`RemoteChain::quota_reader`].
#[derive(Clone, Debug)]
pub struct QuotaReader {
    client: Arc<RemoteClient>,
    rt: Arc<tokio::runtime::Runtime>,
    chain: ChainId,
}

impl QuotaReader {
    /// The chain's quota in bytes, as its partition's leader has it, or an error once `limit`
    /// passed (a caller with a cached value keeps that rather than wait for a lost quorum).
    pub fn read(&self, limit: std::time::Duration) -> Result<u64, RemoteError> {
        let info = self
            .rt
            .handle()
            .block_on(async { tokio::time::timeout(limit, self.client.info(self.chain)).await });
        match info {
            Ok(r) => r.map(|i| i.quota_bytes),
            Err(_) => Err(RemoteError::NoQuorum(
                limit,
                "no answer about the chain's quota".into(),
            )),
        }
    }
}

impl Drop for RemoteChain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The follower may be parked in a stream read; it notices at the next event or its
        // reconnect. Detach rather than block an unmount on the network.
        drop(self.follower.take());
    }
}

/// A client of the cluster `opts` names, with a single-threaded runtime to block on its calls
/// (a client's connections belong to the runtime that made them).
pub(super) fn blocking_client(
    opts: &RemoteOptions,
) -> Result<(RemoteClient, tokio::runtime::Runtime), ReplicaError> {
    let client = RemoteClient::new(opts.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReplicaError::Runtime)?;
    Ok((client, rt))
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
    open_remote_in_session(client, chain, reader, cache, create, Session::random())
}

/// [`open_remote`] with its commits and subscription in `session` (a fresh random one
/// there): its own transactions come back by hash. A transaction of the session that the
/// cache does not hold (another process in the same session, or a commit given up on)
/// makes it resubscribe in full.
pub fn open_remote_in_session(
    client: RemoteClient,
    chain: ChainId,
    reader: SigningKey,
    cache: Arc<dyn Storage>,
    create: Option<(u64, SigningKey)>,
    session: Session,
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
                rt.block_on(client.create(chain, *quota, super::genesis(chain, owner)))?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    let mut info = rt.block_on(client.info(chain))?;
    let genesis = super::incarnation::genesis_in(&info)?;
    if let Some(genesis) = genesis {
        super::incarnation::adopt(&cache, chain, genesis)?;
    }
    let lapse = Arc::new(Lapse::default());
    let upstream = Arc::new(GrpcUpstream {
        client: client.clone(),
        rt: rt.handle().clone(),
        chain,
        session,
        lapse: lapse.clone(),
    });
    let mut installs = 0;
    let mut cleared = false;
    let (local, quota_at_open) = loop {
        let opened = Chain::open_upstream(
            cache.clone(),
            chain,
            ChainOptions {
                // The cluster holds the chain durably: the cache never fdatasyncs; it is
                // readable once appended, and after a crash it is cut at its first defect
                // and the follower fetches the rest again.
                log: LogOptions {
                    disposable: true,
                    ..LogOptions::default()
                },
                deferred_sync: Some(std::time::Duration::ZERO),
                ..ChainOptions::default()
            },
            upstream.clone(),
            |_, _| {},
        );
        let local = match opened {
            // Damage a cut cannot mend (its snapshot, say): the cache starts over.
            Err(ChainError::Log(e @ LogError::Corrupt { .. })) if !cleared => {
                tracing::warn!(%chain, error = %e, "the local cache is damaged; fetching the chain again");
                clear_cache(&cache)?;
                cleared = true;
                continue;
            }
            r => r?.0,
        };
        let first = info.first_index;
        if local.last_index() + 1 >= first {
            break (local, info.quota_bytes);
        }
        // A new host, or one offline while the cluster compacted: the transactions this
        // cache needs next are only in the cluster's snapshot.
        if installs == CATCH_UP_TRIES {
            return Err(ReplicaError::CatchUp(installs));
        }
        installs += 1;
        let had = local.last_index();
        drop(local);
        let index = install_snapshot(&rt, &client, chain, &reader, &cache)?;
        tracing::info!(%chain, had, first, index, "the cache caught up through the cluster's snapshot");
        info = rt.block_on(client.info(chain))?;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let f = Follower {
            client: client.clone(),
            local: local.clone(),
            reader,
            session,
            genesis,
            stop: stop.clone(),
            lapse: lapse.clone(),
            cache,
        };
        let rt2 = rt.clone();
        std::thread::Builder::new()
            .name("ate-follower".into())
            .spawn(move || {
                if let Err(why) = rt2.block_on(f.run()) {
                    if f.stop.load(Ordering::Relaxed) {
                        // Dropped while parked in a read: what ended the read is no news.
                        tracing::debug!(error = %why, "a dropped cache's subscription ended");
                    } else {
                        tracing::error!(error = %why, "the cache stopped following the chain; commits fail from now on (remount to start again)");
                    }
                    f.lapse.set(format!("{why} (for good; remount)"));
                }
            })
            .map_err(ReplicaError::Runtime)?
    };
    local.sync_upstream()?;
    Ok(RemoteChain {
        chain: local,
        quota_at_open,
        stop,
        follower: Some(follower),
        lapse,
        client,
        rt,
    })
}
