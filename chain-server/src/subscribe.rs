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
            let event = match p.log.read_range(ri, ri + 1) {
                Ok(mut v) => match v.pop().map(|e| e.payload) {
                    Some(EntryPayload::Normal(Command::Commit {
                        session: Some(s),
                        tx,
                        ..
                    })) => match hash {
                        Some(h) if session == Some(s) => SubscribeEvent {
                            index: ci,
                            own_hash: h.to_vec(),
                            ..Default::default()
                        },
                        _ => full(ci, tx),
                    },
                    Some(EntryPayload::Normal(Command::Commit { tx, .. }))
                    | Some(EntryPayload::Normal(Command::Create { tx, .. })) => full(ci, tx),
                    None => {
                        let _ = out
                            .send(Err(Status::out_of_range(format!(
                                "chain index {ci} was purged from the log after a snapshot"
                            ))))
                            .await;
                        return;
                    }
                    _ => {
                        let _ = out
                            .send(Err(Status::internal(format!(
                                "log entry {ri} is not a commit"
                            ))))
                            .await;
                        return;
                    }
                },
                Err(crate::log_store::LogStoreError::Missing(_)) => {
                    let _ = out
                        .send(Err(Status::out_of_range(format!(
                            "chain index {ci} was purged from the log after a snapshot"
                        ))))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = out.send(Err(Status::internal(e.to_string()))).await;
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

fn full(index: u64, tx: bytes::Bytes) -> SubscribeEvent {
    SubscribeEvent {
        index,
        tx,
        own_hash: Vec::new(),
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
