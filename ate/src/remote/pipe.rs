//! Committing a run of produced transactions (a copy's, a rekey's) through one commit stream:
//! several replicate while the next are sealed and sent.

use super::{RemoteClient, RemoteError};
use crate::ids::ChainId;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Makes the transactions, in commit order.
pub(super) trait Produce: Send {
    /// Why a transaction could not be made.
    type Error: Send;
    /// The next transaction, None when done.
    fn next_tx(&mut self) -> Option<Result<Bytes, Self::Error>>;
    /// Records done and in all, for the progress log.
    fn progress(&self) -> (usize, usize);
}

impl Produce for crate::copy::Copier<'_, '_> {
    type Error = crate::copy::CopyError;
    fn next_tx(&mut self) -> Option<Result<Bytes, Self::Error>> {
        crate::copy::Copier::next_tx(self)
    }
    fn progress(&self) -> (usize, usize) {
        (self.done(), self.records())
    }
}

impl Produce for crate::rekey::Resealer<'_, '_> {
    type Error = crate::rekey::RekeyError;
    fn next_tx(&mut self) -> Option<Result<Bytes, Self::Error>> {
        crate::rekey::Resealer::next_tx(self)
    }
    fn progress(&self) -> (usize, usize) {
        (self.done(), self.records())
    }
}

impl Produce for crate::backup::Restorer<'_> {
    type Error = crate::backup::BackupError;
    fn next_tx(&mut self) -> Option<Result<Bytes, Self::Error>> {
        crate::backup::Restorer::next_tx(self)
    }
    fn progress(&self) -> (usize, usize) {
        let (done, of) = (self.done(), self.records());
        (done as usize, of as usize)
    }
}

/// What went through.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Piped {
    /// Transactions committed.
    pub committed: usize,
    /// Transactions refused for a failed precondition (a racing writer won).
    pub conflicts: usize,
}

/// Why the run stopped.
#[derive(Debug)]
pub(super) enum PipeError<E> {
    /// A transaction could not be made.
    Produce(E),
    /// The cluster refused one (other than for a precondition) or could not be reached.
    Commit(RemoteError),
}

/// Commits what `producer` makes to `chain`, in order. A refusal for a failed precondition is
/// counted and the run goes on (each transaction stands alone); any other stops it.
pub(super) fn commit_all<P: Produce>(
    rt: &tokio::runtime::Runtime,
    client: &RemoteClient,
    chain: ChainId,
    producer: &mut P,
    what: &'static str,
) -> Result<Piped, PipeError<P::Error>> {
    let (feed, pipe) = tokio::sync::mpsc::channel::<(Bytes, ())>(2);
    let stop_flag = AtomicBool::new(false);
    let stop = &stop_flag;
    let mut failure = None;
    let mut piped = Piped::default();
    let produced = std::thread::scope(|s| {
        // Owns the feed: the pipe ends when the producer does.
        let maker = s.spawn(move || -> Result<(), P::Error> {
            let mut logged = Instant::now();
            while let Some(tx) = producer.next_tx() {
                if stop.load(Ordering::Relaxed) || feed.blocking_send((tx?, ())).is_err() {
                    break;
                }
                if logged.elapsed() >= Duration::from_secs(5) {
                    logged = Instant::now();
                    let (done, of) = producer.progress();
                    tracing::info!(%chain, done, of, "{what}");
                }
            }
            Ok(())
        });
        rt.block_on(client.commit_pipe(chain, None, pipe, |(), r| match r {
            Ok(_) => piped.committed += 1,
            Err(e) if e.is_precondition() => piped.conflicts += 1,
            Err(e) => {
                stop_flag.store(true, Ordering::Relaxed);
                failure.get_or_insert(e);
            }
        }));
        maker.join()
    });
    match produced {
        Ok(r) => r.map_err(PipeError::Produce)?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    match failure {
        Some(e) => Err(PipeError::Commit(e)),
        None => Ok(piped),
    }
}
