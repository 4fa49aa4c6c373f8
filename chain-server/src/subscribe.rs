//! Feeds a subscription: the chain's transactions from an index, read from the Raft log,
//! then each new one as it is applied. Those committed in the subscriber's own writer
//! session go by hash (it holds their bytes). A subscription ends as soon as its reader key
//! loses its role in the chain (the volume's keys were changed): it gets nothing written
//! after that.

use crate::node::Partition;
use crate::pb::chain::SubscribeEvent;
use crate::types::Command;
use ate::validate::ChainState;
use ate::{ChainId, KeyId};
use openraft::EntryPayload;
use std::sync::Arc;
use tokio::sync::mpsc::Sender;
use tonic::Status;

/// The subscriptions a replica serves, by chain: what tells whether a volume is mounted
/// (`atefs rekey` refuses a volume in use).
#[derive(Debug, Default)]
pub struct Subscribers(parking_lot::Mutex<std::collections::HashMap<ChainId, u32>>);

impl Subscribers {
    /// Subscriptions of `chain` served now.
    pub fn count(&self, chain: &ChainId) -> u32 {
        self.0.lock().get(chain).copied().unwrap_or(0)
    }

    /// Subscriptions served now, of every chain.
    pub fn total(&self) -> u64 {
        self.0.lock().values().map(|n| u64::from(*n)).sum()
    }

    /// Counts a subscription of `chain` until the guard drops.
    fn enter(self: &Arc<Self>, chain: ChainId) -> Served {
        *self.0.lock().entry(chain).or_default() += 1;
        Served {
            of: self.clone(),
            chain,
        }
    }
}

/// One subscription counted in [`Subscribers`].
struct Served {
    of: Arc<Subscribers>,
    chain: ChainId,
}

impl Drop for Served {
    fn drop(&mut self) {
        let mut map = self.of.0.lock();
        if let Some(n) = map.get_mut(&self.chain) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.chain);
            }
        }
    }
}

/// Sends events until the client goes away, the chain does, or `reader` no longer reads it.
pub async fn feed(
    p: Partition,
    chain: ChainId,
    mut next: u64,
    session: Option<[u8; 16]>,
    reader: KeyId,
    out: Sender<Result<SubscribeEvent, Status>>,
) {
    let _served = p.subscribers.enter(chain);
    let mut applied = p.sm.watch_applied();
    loop {
        let batch = p.sm.with_chain(&chain, |c| {
            // Checked against the state the batch is taken from: what it holds was written
            // while the key still had a role.
            if !c.view.root().is_some_and(|r| r.can_read(&reader)) {
                Err(Status::permission_denied(format!(
                    "the key this subscription was opened with no longer reads chain {chain} (its keys were changed)"
                )))
            } else if next <= c.index && !c.txs.contains_key(&next) {
                Err(Status::out_of_range(format!(
                    "chain index {next} is covered by a snapshot; resubscribe from {}",
                    c.first_index()
                )))
            } else {
                Ok(c.txs
                    .range(next..)
                    .take(256)
                    .map(|(ci, ri)| {
                        let hash = session.and_then(|_| c.seen.hash_of(*ci));
                        (*ci, *ri, hash)
                    })
                    .collect::<Vec<_>>())
            }
        });
        let batch = match batch {
            None => {
                let _ = out
                    .send(Err(Status::not_found(format!("no chain {chain}"))))
                    .await;
                return;
            }
            Some(Err(s)) => {
                let _ = out.send(Err(s)).await;
                return;
            }
            Some(Ok(b)) => b,
        };
        if batch.is_empty() {
            // A partition whose Raft core stopped applies nothing more: end the stream, so
            // that the subscriber resumes at another replica instead of waiting here.
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                // A subscriber gone while caught up: no event would tell.
                _ = out.closed() => return,
                _ = stops(&p) => {
                    let _ = out.send(Err(stopped_here(&p))).await;
                    return;
                }
            }
            continue;
        }
        for (ci, ri, hash) in batch {
            let event = match event_of(&p.log, ci, ri, hash, session) {
                Ok(event) => event,
                Err(status) => {
                    let _ = out.send(Err(status)).await;
                    return;
                }
            };
            // Counted before it goes: whoever has it has it counted.
            let by_hash = usize::from(!event.own_hash.is_empty());
            p.fed[by_hash].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if out.send(Ok(event)).await.is_err() {
                return;
            }
            next = ci + 1;
        }
    }
}

/// The event for chain index `ci`, log entry `ri`: its hash alone when it is the
/// subscriber's own (its session's, whose hash the state machine still has), else the
/// transaction. The entry is read hollow first: an own transaction the log no longer holds in
/// memory is not read back from the disk only to send its hash (with a small cache of recent
/// entries, that was every byte a writer wrote, read again for its own subscription).
fn event_of(
    log: &crate::log_store::LogStore,
    ci: u64,
    ri: u64,
    hash: Option<[u8; 32]>,
    session: Option<[u8; 16]>,
) -> Result<SubscribeEvent, Status> {
    use crate::log_store::LogStoreError;
    let purged = || {
        Status::out_of_range(format!(
            "chain index {ci} was purged from the log after a snapshot"
        ))
    };
    let read = |r: Result<Option<crate::types::Entry>, LogStoreError>| match r {
        Ok(Some(e)) => Ok(e),
        Ok(None) | Err(LogStoreError::Missing(_)) => Err(purged()),
        Err(e) => Err(Status::internal(e.to_string())),
    };
    let entry = read(log.read_hollow(ri, ri + 1).map(|mut v| v.pop()))?;
    if let EntryPayload::Normal(Command::Commit {
        session: Some(s), ..
    }) = &entry.payload
    {
        if let Some(h) = hash.filter(|_| session == Some(*s)) {
            return Ok(SubscribeEvent {
                index: ci,
                own_hash: h.to_vec(),
                ..Default::default()
            });
        }
    }
    match read(log.fill(entry).map(Some))?.payload {
        EntryPayload::Normal(Command::Commit { tx, .. } | Command::Create { tx, .. }) => {
            Ok(SubscribeEvent {
                index: ci,
                tx,
                own_hash: Vec::new(),
            })
        }
        _ => Err(Status::internal(format!("log entry {ri} is not a commit"))),
    }
}

/// Returns once the partition's Raft core has stopped (or is gone).
async fn stops(p: &Partition) {
    let mut metrics = p.raft.metrics();
    let _ = metrics.wait_for(|m| m.running_state.is_err()).await;
}

/// What a replica answers for a partition whose Raft core stopped: UNAVAILABLE without a
/// leader's address, so that clients try the other replicas.
pub fn stopped_here(p: &Partition) -> Status {
    Status::unavailable(format!(
        "partition {} stopped on this replica: {}",
        p.id,
        p.stopped().unwrap_or_default()
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::log_store::{is_hollow, LogStore};
    use crate::types::{Entry, LogId};

    /// A subscriber's own transactions go as their hash whether or not the log still holds
    /// them in memory, and anyone else's go whole, read back from the disk when the log let
    /// them go.
    #[test]
    fn own_transactions_go_by_hash_and_others_whole_from_memory_or_disk() {
        let log = LogStore::open(Arc::new(ate::storage::MemStorage::new()), 64 << 20).unwrap();
        let (own, other) = ([1; 16], [2; 16]);
        let sessions = [Some(own), Some(other), None, Some(own)];
        let txs: Vec<bytes::Bytes> = (0..4u8).map(|i| vec![i + 1; 3 << 20].into()).collect();
        let entries = (1..)
            .zip(sessions.iter().zip(&txs))
            .map(|(index, (session, tx))| Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Command::Commit {
                    chain: [7; 16],
                    tx: tx.clone(),
                    session: *session,
                    hash: None,
                }),
            });
        log.append_sync(entries.collect()).unwrap();
        log.applied(4);
        let hollow = |i: u64| is_hollow(&log.read_hollow(i, i + 1).unwrap()[0]);
        assert_eq!(
            (1..=4).map(hollow).collect::<Vec<_>>(),
            [true, true, false, false],
            "the two oldest left memory"
        );
        for (i, (session, tx)) in (1..).zip(sessions.iter().zip(&txs)) {
            let hash = [i as u8; 32];
            let event = event_of(&log, 10 + i, i, Some(hash), Some(own)).unwrap();
            assert_eq!(event.index, 10 + i);
            if *session == Some(own) {
                assert_eq!((event.own_hash, event.tx.len()), (hash.to_vec(), 0), "{i}");
            } else {
                assert!(event.own_hash.is_empty(), "{i}");
                assert_eq!(event.tx, *tx, "{i}");
            }
        }
        let gone = event_of(&log, 20, 9, None, None).unwrap_err();
        assert_eq!(gone.code(), tonic::Code::OutOfRange);
    }
}
