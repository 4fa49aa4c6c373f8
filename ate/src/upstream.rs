//! A chain whose order is decided elsewhere (a chain-server cluster): commits are sent
//! upstream in the order they were queued (through the upstream's pipeline when it has one,
//! else everything queued at the time in one batch call);
//! the transactions the upstream orders (ours and other writers') come back through
//! [`crate::Chain::apply_upstream`] and are appended to the local log, which is then a cache
//! of the upstream chain at the same indexes.
//! A commit is acknowledged once the upstream has it durably and the local view shows it.

use crate::chain::{Chain, ChainError, PendingCommit, Receipt};
use crate::ids::TxHash;
use bytes::Bytes;
use std::time::Duration;
use thiserror::Error;

/// Why the upstream refused or failed a commit.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum UpstreamError {
    /// A precondition failed there (a racing writer won).
    #[error("a precondition failed: {0}")]
    Precondition(String),
    /// The author may not do this.
    #[error("not permitted: {0}")]
    Denied(String),
    /// No room: the chain's quota is used up, or the servers' disks are nearly full (the
    /// server's message says which).
    #[error("no room: {0}")]
    Quota(String),
    /// Anything else (no quorum, unreachable, malformed).
    #[error("{0}")]
    Failed(String),
}

/// Where commits go.
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Commits an encoded, signed transaction; returns its index in the chain. (Shared: a
    /// copy of an 8 MiB batch is not free, and the chain may hold the bytes, see
    /// [`Self::returns_own_by_hash`].)
    fn commit(&self, tx: Bytes) -> Result<u64, UpstreamError>;
    /// Commits transactions in their order in one round trip; one result each. The default
    /// sends them one at a time.
    fn commit_batch(&self, txs: Vec<Bytes>) -> Vec<Result<u64, UpstreamError>> {
        txs.into_iter().map(|tx| self.commit(tx)).collect()
    }
    /// Whether this chain's own transactions come back by hash only
    /// ([`Chain::apply_upstream_own`]): the chain then holds what it sent until then.
    fn returns_own_by_hash(&self) -> bool {
        false
    }
    /// A pipeline for the writer's queue, when this upstream has one: the sender hands each
    /// transaction to [`Pipe::send`] in order and the acknowledging thread takes each result
    /// from [`Pipe::answers`] in the same order, with several in flight. Without one the
    /// sender calls [`Self::commit_batch`] and waits for each batch's answers.
    fn pipe(&self) -> Option<Pipe> {
        None
    }
    /// The chain's last index as of now (a linearizable read).
    fn barrier(&self) -> Result<u64, UpstreamError>;
    /// Why transactions are not coming back from the upstream now, if they are not: waits
    /// for them end at once with this reason instead of timing out (until they come again).
    fn stopped(&self) -> Option<String> {
        None
    }
}

/// The error a commit gets while the upstream is [not sending back](Upstream::stopped).
pub fn stopped_error(upstream: &dyn Upstream) -> Option<UpstreamError> {
    upstream.stopped().map(|why| {
        UpstreamError::Failed(format!("the local cache is not following the chain: {why}"))
    })
}

/// A commit pipeline's two ends (see [`Upstream::pipe`]).
pub struct Pipe {
    /// Sends a transaction (blocks while the pipeline is full); false once it stopped.
    pub send: Box<dyn FnMut(Bytes) -> bool + Send>,
    /// The results, in the order the transactions were sent.
    pub answers: std::sync::mpsc::Receiver<Result<u64, UpstreamError>>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipe")
    }
}

/// Waits until `index` came back from the upstream into the local view.
fn wait_back(
    shared: &crate::chain::Shared,
    upstream: &dyn Upstream,
    index: u64,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + APPLY_WAIT;
    loop {
        if Chain::wait_visible(shared, index, Duration::from_millis(100)) {
            return Ok(());
        }
        if let Some(e) = stopped_error(upstream) {
            return Err(e.to_string());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("not received back within {APPLY_WAIT:?}"));
        }
    }
}

/// How long a commit may wait for the upstream's answer to show up locally.
const APPLY_WAIT: Duration = Duration::from_secs(60);

pub(crate) struct Outgoing {
    pub(crate) bytes: Bytes,
    pub(crate) hash: TxHash,
    pub(crate) reply: std::sync::Arc<crate::chain::Reply>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("hash", &self.hash)
            .finish()
    }
}

/// Most bytes of transactions the sender puts in one upstream call (the server bounds a
/// message at 64 MiB).
const BATCH_BYTES: usize = 32 << 20;

/// Answered batches the sender may hand on before the acknowledging thread caught up.
const ACKS_AHEAD: usize = 4;

/// A batch the upstream answered, on its way to being acknowledged.
type Answered = (Vec<Outgoing>, Vec<Result<u64, UpstreamError>>);

/// The sender thread (upstreams without a pipeline; see [`pipe_loop`] for those with one):
/// everything queued goes up in one call (in queue order), and the next
/// call takes what queued meanwhile. A second thread acknowledges each answered commit once
/// it is back in the local view: the next call does not wait for that (appending an 8 MiB
/// transaction to the local cache took as long as sending it, and the link sat idle).
pub(crate) fn sender_loop(
    chain: std::sync::Weak<crate::chain::Shared>,
    upstream: std::sync::Arc<dyn Upstream>,
    rx: &crate::queue::BatchQueue<Outgoing>,
) {
    if let Some(pipe) = upstream.pipe() {
        return pipe_loop(&chain, upstream.as_ref(), rx, pipe);
    }
    let (answered, to_ack) = std::sync::mpsc::sync_channel::<Answered>(ACKS_AHEAD);
    std::thread::scope(|s| {
        let (chain, upstream) = (&chain, upstream.as_ref());
        let acker = std::thread::Builder::new()
            .name("ate-upstream-ack".into())
            .spawn_scoped(s, move || {
                for (batch, results) in to_ack {
                    acknowledge(chain, upstream, batch, results);
                }
            });
        if let Err(e) = acker {
            // Without the second thread, acknowledge in this one.
            tracing::warn!(error = %e, "no acknowledging thread; acknowledging in the sender");
        }
        let mut answered = Some(answered);
        while let Some(mut batch) = rx.pop_batch(256, BATCH_BYTES, |o| o.bytes.len()) {
            let mut txs: Vec<Bytes> = batch
                .iter_mut()
                .map(|o| std::mem::take(&mut o.bytes))
                .collect();
            let results = if txs.len() == 1 {
                vec![upstream.commit(txs.remove(0))]
            } else {
                upstream.commit_batch(txs)
            };
            let unsent = match &answered {
                Some(tx) => tx.send((batch, results)).err().map(|e| e.0),
                None => Some((batch, results)),
            };
            if let Some((batch, results)) = unsent {
                answered = None;
                acknowledge(chain, upstream, batch, results);
            }
        }
        drop(answered);
    });
}

/// The sender through a pipeline: each queued transaction goes into the pipe in queue order
/// while a second thread acknowledges the answers as they come (in the same order), so the
/// next transaction travels while earlier ones replicate.
fn pipe_loop(
    chain: &std::sync::Weak<crate::chain::Shared>,
    upstream: &dyn Upstream,
    rx: &crate::queue::BatchQueue<Outgoing>,
    pipe: Pipe,
) {
    let Pipe { mut send, answers } = pipe;
    // Each transaction with its answer when it was given here instead of by the pipe.
    let (sent, to_ack) = std::sync::mpsc::channel::<(Outgoing, Option<UpstreamError>)>();
    std::thread::scope(|s| {
        let acker = move || {
            // Answers still to come for transactions given up on: discarded, in order.
            let mut owed = 0usize;
            for (o, local) in to_ack {
                let r = match local {
                    Some(e) => Err(e),
                    None => pipe_answer(&answers, &mut owed, upstream),
                };
                acknowledge(chain, upstream, vec![o], vec![r]);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("ate-upstream-ack".into())
            .spawn_scoped(s, acker)
        {
            tracing::error!(error = %e, "no acknowledging thread; commits cannot be answered");
            return;
        }
        while let Some(batch) = rx.pop_batch(256, BATCH_BYTES, |o| o.bytes.len()) {
            for mut o in batch {
                // Once nothing comes back, sending would only wait out the deadline.
                if let Some(e) = stopped_error(upstream) {
                    if sent.send((o, Some(e))).is_err() {
                        break;
                    }
                    continue;
                }
                let tx = std::mem::take(&mut o.bytes);
                // The acknowledging thread learns of it first: its answer may come at once.
                if sent.send((o, None)).is_err() || !send(tx) {
                    break;
                }
            }
        }
        // Closing both ends lets the pipe answer what it holds and the acknowledger finish.
        drop(send);
        drop(sent);
    });
}

/// The next transaction's answer from the pipe. Once the upstream stopped sending back,
/// waiting for the pipe (its deadline) would hold every commit behind this one: this one is
/// given up on, and its answer, when it comes, is skipped (`owed`).
fn pipe_answer(
    answers: &std::sync::mpsc::Receiver<Result<u64, UpstreamError>>,
    owed: &mut usize,
    upstream: &dyn Upstream,
) -> Result<u64, UpstreamError> {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        match answers.recv_timeout(Duration::from_millis(100)) {
            Ok(_) if *owed > 0 => *owed -= 1,
            Ok(r) => return r,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(UpstreamError::Failed("the commit pipeline stopped".into()))
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(e) = stopped_error(upstream) {
                    *owed += 1;
                    return Err(e);
                }
            }
        }
    }
}

/// Answers each commit of an answered batch once it is back in the local view.
fn acknowledge(
    chain: &std::sync::Weak<crate::chain::Shared>,
    upstream: &dyn Upstream,
    batch: Vec<Outgoing>,
    results: Vec<Result<u64, UpstreamError>>,
) {
    for (o, r) in batch.into_iter().zip(results) {
        let Some(shared) = chain.upgrade() else {
            o.reply.send(Err(ChainError::Closed));
            continue;
        };
        if r.is_err() {
            // Refused, or its fate unknown: should it come back after all, it comes in full
            // (the follower asks again when it does not hold the bytes).
            shared.held.lock().remove(&o.hash);
        }
        let r = r.map_err(ChainError::Upstream).and_then(|index| {
            match wait_back(&shared, upstream, index) {
                Ok(()) => {
                    // Arrived inside an image of the chain rather than by itself, it was
                    // never asked for by hash.
                    shared.held.lock().remove(&o.hash);
                    Ok(Receipt {
                        index,
                        hash: o.hash,
                    })
                }
                Err(why) => Err(ChainError::Upstream(UpstreamError::Failed(format!(
                    "committed upstream at {index}, but {why}"
                )))),
            }
        });
        o.reply.send(r);
    }
}

impl Chain {
    /// Makes the local view at least as new as the upstream is now (close-to-open: call it
    /// before serving an open).
    pub fn sync_upstream(&self) -> Result<u64, ChainError> {
        let Some(up) = self.upstream() else {
            return Ok(self.last_index());
        };
        let index = up.barrier().map_err(ChainError::Upstream)?;
        wait_back(&self.shared, up.as_ref(), index).map_err(|why| {
            ChainError::Upstream(UpstreamError::Failed(format!(
                "the upstream is at {index} but only {} arrived: {why}",
                self.last_index()
            )))
        })?;
        Ok(index)
    }

    /// A placeholder handle that is already answered (for the upstream path's errors).
    pub(crate) fn answered(r: Result<Receipt, ChainError>) -> PendingCommit {
        let reply = std::sync::Arc::new(crate::chain::Reply::default());
        reply.send(r);
        PendingCommit::new(reply)
    }
}
