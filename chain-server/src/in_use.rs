//! Whether a chain is in use: how many subscriptions of it the replicas of its partition
//! serve between them. A mount holds its subscription at whichever replica it reached, and
//! keeps it there when the leadership moves, so no one replica's count says whether a volume
//! is mounted (`atefs rekey` refuses a volume in use).

use crate::membership::{ask, raft_addr, Ask};
use crate::node::{Node, Partition};
use ate::ChainId;

/// The partition's count of a chain's subscriptions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InUse {
    /// Subscriptions served by the replicas that answered, this one included.
    pub total: u32,
    /// Members that did not answer (their subscriptions are not in `total`).
    pub unanswered: Vec<u64>,
}

/// Counts `chain`'s subscriptions on this replica and asks every other member of `p` for
/// theirs, all at once.
pub async fn count(node: &Node, p: &Partition, chain: ChainId) -> InUse {
    let others: Vec<(u64, String)> = {
        let m = p.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != node.config.id)
            .map(|(id, n)| (*id, raft_addr(n).to_string()))
            .collect()
    };
    let body = postcard::to_stdvec(&chain.0).unwrap_or_default();
    let asks = others.into_iter().map(|(id, addr)| {
        let body = body.clone();
        async move {
            let reply = ask(&node.peers, &addr, Ask::Subscribers, p.id, body).await;
            let count = reply
                .map_err(|s| s.message().to_string())
                .and_then(|r| postcard::from_bytes::<u32>(&r.body).map_err(|e| e.to_string()));
            if let Err(e) = &count {
                tracing::debug!(partition = p.id, peer = id, error = %e, "counting subscriptions");
            }
            (id, count.ok())
        }
    });
    let mut in_use = InUse {
        total: p.subscribers.count(&chain),
        unanswered: Vec::new(),
    };
    for (id, count) in futures_util::future::join_all(asks).await {
        match count {
            Some(n) => in_use.total = in_use.total.saturating_add(n),
            None => in_use.unanswered.push(id),
        }
    }
    in_use
}
