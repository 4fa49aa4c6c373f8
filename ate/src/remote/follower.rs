//! The follower of a remote chain's cache: it feeds the cache the chain's transactions in
//! order, rides out a cluster it cannot reach (retrying for as long as the cache is open)
//! and takes the cluster's image when the cluster compacted past it (docs/chain-server.md,
//! "A running mount that lost the cluster follows again by itself").

use super::client::{Event, RemoteClient, RemoteError, Session, Subscription};
use super::replica::{fetch_image, ReplicaError, CATCH_UP_TRIES, IMAGE_TMP};
use crate::chain::{Chain, PendingCommit};
use crate::crypto::SigningKey;
use crate::storage::Storage;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tonic::Code;

/// Why a cache is not following its chain now, if it is not; waited on for it to follow again.
#[derive(Debug, Default)]
pub(super) struct Lapse {
    why: parking_lot::Mutex<Option<String>>,
    cv: parking_lot::Condvar,
}

impl Lapse {
    pub(super) fn why(&self) -> Option<String> {
        self.why.lock().clone()
    }

    pub(super) fn set(&self, why: String) {
        *self.why.lock() = Some(why);
    }

    /// Following again; returns why it was not.
    fn clear(&self) -> Option<String> {
        let was = self.why.lock().take();
        self.cv.notify_all();
        was
    }

    /// Waits until following, at most `limit`; false on timeout.
    pub(super) fn wait(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut why = self.why.lock();
        while why.is_some() {
            if self.cv.wait_until(&mut why, deadline).timed_out() {
                return why.is_none();
            }
        }
        true
    }
}

/// Feeds a running cache the chain's transactions, in order, until stopped.
pub(super) struct Follower {
    pub(super) client: Arc<RemoteClient>,
    pub(super) local: Chain,
    pub(super) reader: SigningKey,
    pub(super) session: Session,
    /// The genesis of the chain the cache holds (None: the cluster did not say): a chain of
    /// its id made again since is refused instead of followed.
    pub(super) genesis: Option<crate::ids::TxHash>,
    pub(super) stop: Arc<AtomicBool>,
    /// Why the cache is not following now, if it is not (what commits fail with meanwhile).
    pub(super) lapse: Arc<Lapse>,
    pub(super) cache: Arc<dyn Storage>,
}

/// What the follower does about a failed subscription or image fetch.
enum Setback {
    /// The cluster compacted away what the cache needs next: take its image.
    Behind,
    /// Unreachable, no quorum, a leader gone mid-stream: try again.
    Passing(String),
    /// Anything the cache cannot get past (the chain deleted, the reader refused, a diverged
    /// or damaged cache): it stops following; a remount starts again.
    Final(String),
}

fn setback(e: RemoteError) -> Setback {
    match e {
        RemoteError::Refused(Code::OutOfRange, _) => Setback::Behind,
        RemoteError::NoQuorum(..) | RemoteError::Endpoint(..) => Setback::Passing(e.to_string()),
        RemoteError::Refused(
            Code::Unavailable
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted,
            _,
        ) => Setback::Passing(e.to_string()),
        other => Setback::Final(other.to_string()),
    }
}

/// The pause between attempts to reach the cluster again (each attempt already retried
/// across the replicas for the client's deadline).
const REACH_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

impl Follower {
    /// Runs until stopped (Ok) or until something it cannot get past (Err, with why).
    /// Appends are pipelined; each receipt's index is checked against the upstream's, so a
    /// diverged cache stops loudly instead of serving wrong data.
    pub(super) async fn run(&self) -> Result<(), String> {
        let mut sub = self.subscribe();
        let mut pending: std::collections::VecDeque<(u64, PendingCommit)> = Default::default();
        let mut behind = 0;
        // Set while the subscription sends everything in full, up to this index.
        let mut in_full: Option<u64> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let next = match sub.connect().await {
                Ok(true) => {
                    self.following();
                    continue;
                }
                Ok(false) => sub.next_event().await,
                Err(e) => Err(e),
            };
            let (index, event) = match next {
                Ok(ev) => ev,
                Err(e) => {
                    match setback(e) {
                        Setback::Behind => {
                            settle(&mut pending, true)?;
                            behind += 1;
                            if behind > CATCH_UP_TRIES {
                                // Each image was overtaken before the cache subscribed after it.
                                self.not_following(format!(
                                    "the cluster compacted past {CATCH_UP_TRIES} images in a row"
                                ))
                                .await;
                                behind = 0;
                            }
                            self.take_image().await?;
                            sub = self.subscribe();
                            in_full = None;
                        }
                        Setback::Passing(why) => self.not_following(why).await,
                        Setback::Final(why) => {
                            return Err(format!("the chain's subscription failed: {why}"))
                        }
                    }
                    continue;
                }
            };
            let applied = match event {
                Event::Tx(bytes) => self.local.apply_upstream(index, bytes),
                Event::Own(hash) => match self.local.apply_upstream_own(&hash) {
                    Some(r) => r,
                    None => {
                        // Committed in our session, but no longer held here (its commit had
                        // failed as far as we knew): this one in full, then by hash again.
                        tracing::info!(index, %hash, "an own transaction came back that is not held; fetching it in full");
                        sub = self.subscribe_from(index, false);
                        in_full = Some(index);
                        continue;
                    }
                },
            };
            behind = 0;
            match applied {
                Ok(p) => pending.push_back((index, p)),
                Err(e) => return Err(format!("the cache refused transaction {index}: {e}")),
            }
            if in_full.is_some_and(|at| index >= at) {
                // A session's own transactions in full cost the link their size again.
                in_full = None;
                sub = self.subscribe_from(index + 1, true);
            }
            settle(&mut pending, false)?;
        }
    }

    /// A subscription from the cache's next index, its session's transactions by hash.
    fn subscribe(&self) -> Subscription<'_> {
        self.subscribe_from(self.local.last_index() + 1, true)
    }

    /// A subscription from `from`; with `by_hash`, the session's own transactions come back
    /// by hash, else everything in full.
    fn subscribe_from(&self, from: u64, by_hash: bool) -> Subscription<'_> {
        let session = by_hash.then_some(self.session);
        self.client
            .subscribe(self.local.id(), from, self.reader.clone(), session)
            .of_genesis(self.genesis)
    }

    /// The subscription is up (again): commits go through from now on.
    fn following(&self) {
        if let Some(why) = self.lapse.clear() {
            // At the level of the warning that it had lost it, so that both show by default.
            tracing::warn!(chain = %self.local.id(), was = %why, "the cache follows the chain again");
        }
    }

    /// Records why the cache is behind for now (commits fail at once with it, instead of
    /// each waiting out the client's deadline) and pauses before the next attempt.
    async fn not_following(&self, why: String) {
        if self.lapse.why().is_none() {
            tracing::warn!(chain = %self.local.id(), error = %why, "the cache lost the chain's subscription; reconnecting");
        }
        self.lapse.set(format!("{why} (reconnecting)"));
        tokio::time::sleep(REACH_AGAIN).await;
    }

    /// The cluster compacted past this cache while it ran (it was cut off, or paused, for
    /// longer than the cluster keeps log): the chain's image replaces the cache's contents.
    async fn take_image(&self) -> Result<(), String> {
        let chain = self.local.id();
        let had = self.local.last_index();
        let index = match fetch_image(&self.client, chain, &self.reader, &self.cache).await {
            Ok(index) => index,
            Err(ReplicaError::Remote(e)) => {
                let _ = self.cache.remove(IMAGE_TMP);
                return match setback(e) {
                    Setback::Final(why) => Err(format!("fetching the chain's image failed: {why}")),
                    Setback::Behind => Ok(()),
                    Setback::Passing(why) => {
                        self.not_following(format!("fetching the chain's image: {why}"))
                            .await;
                        Ok(())
                    }
                };
            }
            Err(e) => return Err(format!("the cache cannot hold the chain's image: {e}")),
        };
        match self.local.install_image(IMAGE_TMP, index) {
            Ok(true) => {
                tracing::info!(%chain, had, index, "the running cache caught up through the cluster's image");
                Ok(())
            }
            Ok(false) => {
                // Not ahead of the cache (a new leader kept more log): subscribe again.
                let _ = self.cache.remove(IMAGE_TMP);
                Ok(())
            }
            Err(e) => Err(format!("the cache could not take the chain's image: {e}")),
        }
    }
}

/// Checks the receipts of the appends that are done (all of them, waiting, with `all`).
fn settle(
    pending: &mut std::collections::VecDeque<(u64, PendingCommit)>,
    all: bool,
) -> Result<(), String> {
    while pending.front().is_some_and(|(_, p)| all || p.is_done()) {
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
    Ok(())
}
