//! Replicas joining a cluster after its first start, and members leaving it.
//!
//! A cluster's first start makes every replica on the `--peer` list a voter of every
//! partition. Later, a replica that is not a voter of a partition asks to become one (`Join`,
//! sent to every peer it knows; only the leader acts): the leader adds it as a learner, and
//! once it has caught up (its log within [`LAG`] entries of the leader's) makes it a voter.
//! The asking side drives it, not the leaders' lists: a StatefulSet scaled up starts its new
//! pods while the old ones still run with the old list, and waits for each new pod to be
//! ready (a voter) before it restarts an old one with the new list.
//!
//! A replica whose `--peer` list does not name some member asks the leader to remove it
//! (`Forget`); the leader removes only members it has not heard from for the whole of
//! `--forget-after-secs` while leading. So a replica scaled away is removed once it is gone,
//! while one that a stale list leaves out but that runs is kept (and one removed while it was
//! down joins again when it comes back: its own list names it).
//!
//! A joined member's address in the membership carries its API address after its Raft one
//! ([`member_node`]), so that replicas whose lists do not name it can still send clients to it
//! when it leads.

use crate::network::PeerChannels;
use crate::node::{known_leader, Node, Partition, PeerAddr};
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::{RaftReply, RaftRequest};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries a learner may be behind its leader and still be made a voter.
pub const LAG: u64 = 64;

/// How often a replica that is not a voter asks again, and looks for members to forget.
pub const EVERY: Duration = Duration::from_secs(1);

/// How long one request may take (a membership change waits for a quorum).
const ASK_TIMEOUT: Duration = Duration::from_secs(20);

/// A replica asking to be a voter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its id.
    pub id: u64,
    /// Its Raft address.
    pub raft: String,
    /// Its client API address.
    pub api: String,
}

/// Where a join stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinStatus {
    /// A voter.
    Voter,
    /// A learner, `matched` of the leader's `last` entries replicated to it.
    CatchingUp {
        /// The last index it holds, as the leader knows it.
        matched: u64,
        /// The leader's last index.
        last: u64,
    },
    /// The asked replica does not lead the partition.
    NotLeader {
        /// The leader it knows of.
        leader: Option<u64>,
    },
}

/// The answer to a request to forget members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetReply {
    /// The ids removed now.
    pub removed: Vec<u64>,
    /// The partition's members (voters and learners) after that.
    pub members: Vec<u64>,
}

/// Why a membership request was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The id is a member at another address.
    #[error("replica {id} is a member at {has}, not at {asked}: two replicas with one id?")]
    Conflict {
        /// The id asked for.
        id: u64,
        /// The member's Raft address.
        has: String,
        /// The address the request gave.
        asked: String,
    },
    /// The asked replica does not lead.
    #[error("not the leader of partition {partition} (leader: {leader:?})")]
    NotLeader {
        /// The partition.
        partition: u32,
        /// The leader it knows of.
        leader: Option<u64>,
    },
    /// openraft refused or failed the change (another one in progress, no quorum).
    #[error("membership change: {0}")]
    Raft(String),
    /// No replica asked could answer for a partition before the deadline.
    #[error("partition {partition}: no leader answered ({last})")]
    NoAnswer {
        /// The partition.
        partition: u32,
        /// The last failure.
        last: String,
    },
    /// The leader still hears from the replica to forget at the deadline.
    #[error("partition {partition}: replica {id} is still heard from (is it still running?)")]
    StillHeard {
        /// The partition.
        partition: u32,
        /// The replica.
        id: u64,
    },
}

/// A member's entry in a partition's membership: its Raft address, a space, its API address.
pub fn member_node(peer: &PeerAddr) -> BasicNode {
    BasicNode::new(format!("{} {}", peer.raft, peer.api))
}

/// The Raft address in a member's entry (an entry made at a cluster's first start is only
/// that).
pub fn raft_addr(node: &BasicNode) -> &str {
    node.addr.split(' ').next().unwrap_or_default()
}

/// The API address in a member's entry, for members that joined later.
pub fn api_addr(node: &BasicNode) -> Option<&str> {
    node.addr.split_once(' ').map(|(_, api)| api)
}

/// A membership change, waited for at most [`ASK_TIMEOUT`]: one that cannot commit (no
/// quorum) must not hold up the requests and the upkeep of the other partitions. Given up on,
/// it still goes on in the Raft core.
async fn bounded<T, E: std::fmt::Display>(
    change: impl std::future::Future<Output = Result<T, E>>,
) -> Result<(), MembershipError> {
    match tokio::time::timeout(ASK_TIMEOUT, change).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(MembershipError::Raft(e.to_string())),
        Err(_) => Err(MembershipError::Raft(format!(
            "not committed within {ASK_TIMEOUT:?} (no quorum?)"
        ))),
    }
}

/// What a partition's leader does with a join request.
pub async fn join(
    node: &Node,
    p: &Partition,
    req: &JoinRequest,
) -> Result<JoinStatus, MembershipError> {
    let (leader, membership, matched, last) = {
        let m = p.raft.metrics();
        let m = m.borrow();
        // None until the learner has acknowledged an append (or a snapshot).
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&req.id).cloned().flatten())
            .map(|l| l.index);
        (
            known_leader(&m),
            m.membership_config.membership().clone(),
            matched,
            m.last_log_index.unwrap_or(0),
        )
    };
    if leader != Some(node.config.id) {
        return Ok(JoinStatus::NotLeader { leader });
    }
    let Some(known) = membership.get_node(&req.id) else {
        let learner = member_node(&PeerAddr {
            raft: req.raft.clone(),
            api: req.api.clone(),
        });
        bounded(p.raft.add_learner(req.id, learner, false)).await?;
        tracing::info!(partition = p.id, id = req.id, raft = %req.raft, "added a learner");
        return Ok(JoinStatus::CatchingUp { matched: 0, last });
    };
    let caught_up = matched.is_some_and(|m| m.saturating_add(LAG) >= last);
    let matched = matched.unwrap_or(0);
    if raft_addr(known) != req.raft {
        return Err(MembershipError::Conflict {
            id: req.id,
            has: raft_addr(known).to_string(),
            asked: req.raft.clone(),
        });
    }
    if membership.voter_ids().any(|v| v == req.id) {
        return Ok(JoinStatus::Voter);
    }
    if !caught_up {
        return Ok(JoinStatus::CatchingUp { matched, last });
    }
    let voter = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
    bounded(p.raft.change_membership(voter, false)).await?;
    tracing::info!(partition = p.id, id = req.id, "made a learner a voter");
    Ok(JoinStatus::Voter)
}

/// What a partition's leader does with a request to forget `ids`: removes those it has not
/// heard from for `--forget-after-secs` while leading for at least as long (never itself).
pub async fn forget(
    node: &Node,
    p: &Partition,
    ids: &[u64],
) -> Result<ForgetReply, MembershipError> {
    let (leader, term, membership) = {
        let m = p.raft.metrics();
        let m = m.borrow();
        (
            known_leader(&m),
            m.current_term,
            m.membership_config.membership().clone(),
        )
    };
    let me = node.config.id;
    if leader != Some(me) {
        return Err(MembershipError::NotLeader {
            partition: p.id,
            leader,
        });
    }
    let after = node.config.forget_after;
    let mut members: Vec<u64> = membership.nodes().map(|(id, _)| *id).collect();
    if node.leading.for_term(p.id, term) < after {
        return Ok(ForgetReply {
            removed: Vec::new(),
            members,
        });
    }
    let gone: BTreeSet<u64> = ids
        .iter()
        .copied()
        .filter(|id| *id != me && membership.get_node(id).is_some())
        .filter(|id| !node.peer_room.heard_within(*id, after))
        .collect();
    if gone.is_empty() {
        return Ok(ForgetReply {
            removed: Vec::new(),
            members,
        });
    }
    let voters: BTreeSet<u64> = membership
        .voter_ids()
        .filter(|v| gone.contains(v))
        .collect();
    let learners: BTreeSet<u64> = gone.difference(&voters).copied().collect();
    if !voters.is_empty() {
        let change = ChangeMembers::RemoveVoters(voters.clone());
        bounded(p.raft.change_membership(change, false)).await?;
    }
    if !learners.is_empty() {
        let change = ChangeMembers::RemoveNodes(learners);
        bounded(p.raft.change_membership(change, false)).await?;
    }
    tracing::info!(partition = p.id, removed = ?gone, "removed members not heard from");
    members.retain(|id| !gone.contains(id));
    Ok(ForgetReply {
        removed: gone.into_iter().collect(),
        members,
    })
}

/// A leader left in a joint configuration (it lost leadership between the two steps of a
/// change) finishes it: the second configuration is the one asked for.
async fn finish_joint(node: &Node, p: &Partition) -> Result<(), MembershipError> {
    let target = {
        let m = p.raft.metrics();
        let m = m.borrow();
        if known_leader(&m) != Some(node.config.id) {
            return Ok(());
        }
        let joint = m.membership_config.membership().get_joint_config();
        match joint.as_slice() {
            [_, last] => last.clone(),
            _ => return Ok(()),
        }
    };
    bounded(
        p.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(target), false),
    )
    .await
}

/// Keeps this replica a voter of every partition and asks leaders to forget members its list
/// does not name; runs while the process does.
pub async fn keep(node: Arc<Node>) {
    let peers = node.peers.clone();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Partitions where a leader said this replica is only a learner: it must not call
    // elections on the strength of the membership it remembers.
    let mut quiet = vec![false; node.partitions.len()];
    loop {
        tick.tick().await;
        for (p, quiet) in node.partitions.iter().zip(quiet.iter_mut()) {
            if p.stopped().is_some() {
                continue;
            }
            if let Err(e) = finish_joint(&node, p).await {
                tracing::debug!(partition = p.id, error = %e, "finishing a joint membership");
            }
            let (voter, leader, unlisted) = {
                let m = p.raft.metrics();
                let m = m.borrow();
                let membership = m.membership_config.membership();
                let unlisted: Vec<u64> = membership
                    .nodes()
                    .map(|(id, _)| *id)
                    .filter(|id| !node.config.peers.contains_key(id))
                    .collect();
                let leader = known_leader(&m).and_then(|l| {
                    membership
                        .get_node(&l)
                        .map(|n| (l, raft_addr(n).to_string()))
                });
                (
                    membership.voter_ids().any(|v| v == node.config.id),
                    leader,
                    unlisted,
                )
            };
            let me = node.config.id;
            let led = leader.as_ref().is_some_and(|(l, _)| *l == me);
            let heard = led || p.heard_from_leader_within(node.quiet_leader());
            if voter && heard && *quiet {
                p.raft.runtime_config().elect(true);
                *quiet = false;
                tracing::info!(partition = p.id, "a voter again: takes part in elections");
            }
            if !voter || !heard {
                // Not a voter, or a voter no leader calls on: one removed while it was down
                // still has the membership it knew (and would call elections no member
                // answers, in ever higher terms).
                if let Some(JoinStatus::CatchingUp { .. }) = ask_to_join(&node, &peers, p.id).await
                {
                    if !*quiet {
                        p.raft.runtime_config().elect(false);
                        *quiet = true;
                        tracing::info!(partition = p.id, "a learner: calls no elections");
                    }
                }
            } else if !unlisted.is_empty() {
                match leader {
                    Some((l, _)) if l == node.config.id => {
                        if let Err(e) = forget(&node, p, &unlisted).await {
                            tracing::warn!(partition = p.id, error = %e, "forgetting members");
                        }
                    }
                    Some((_, addr)) => {
                        let body = postcard::to_stdvec(&unlisted).unwrap_or_default();
                        if let Err(e) = ask(&peers, &addr, Ask::Forget, p.id, body).await {
                            tracing::debug!(partition = p.id, error = %e, "asking to forget");
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// Sends this replica's join request for partition `p` to every peer on its list; the
/// leader's answer, if one answered.
async fn ask_to_join(node: &Node, peers: &PeerChannels, p: u32) -> Option<JoinStatus> {
    let me = &node.config.peers[&node.config.id];
    let req = JoinRequest {
        id: node.config.id,
        raft: me.raft.clone(),
        api: me.api.clone(),
    };
    let body = postcard::to_stdvec(&req).unwrap_or_default();
    for (id, peer) in &node.config.peers {
        if *id == node.config.id {
            continue;
        }
        match ask(peers, &peer.raft, Ask::Join, p, body.clone()).await {
            Ok(reply) => match postcard::from_bytes::<JoinStatus>(&reply.body) {
                Ok(JoinStatus::NotLeader { .. }) => continue,
                Ok(status) => {
                    if status == JoinStatus::Voter {
                        tracing::debug!(partition = p, leader = id, "a voter, its leader says");
                    } else {
                        tracing::info!(partition = p, leader = id, ?status, "asked to join");
                    }
                    return Some(status);
                }
                Err(e) => tracing::warn!(partition = p, peer = id, error = %e, "join answer"),
            },
            Err(e) => tracing::debug!(partition = p, peer = id, error = %e, "asking to join"),
        }
    }
    None
}

/// Which request.
#[derive(Clone, Copy)]
pub(crate) enum Ask {
    Join,
    Forget,
    /// How many subscriptions of a chain the replica serves ([`crate::in_use`]).
    Subscribers,
}

impl Ask {
    /// A count is worth little once it is seconds old; a membership change may wait on a
    /// commit.
    fn timeout(self) -> Duration {
        match self {
            Ask::Join | Ask::Forget => ASK_TIMEOUT,
            Ask::Subscribers => Duration::from_secs(3),
        }
    }
}

/// Sends a request other than Raft's own to the Raft service at `addr`.
pub(crate) async fn ask(
    peers: &PeerChannels,
    addr: &str,
    what: Ask,
    partition: u32,
    body: Vec<u8>,
) -> Result<RaftReply, tonic::Status> {
    let channel = peers
        .get(addr)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = RaftClient::new(channel);
    let mut req = tonic::Request::new(RaftRequest {
        partition,
        body: body.into(),
        ..Default::default()
    });
    req.set_timeout(what.timeout());
    let reply = match what {
        Ask::Join => client.join(req).await?,
        Ask::Forget => client.forget(req).await?,
        Ask::Subscribers => client.subscribers(req).await?,
    };
    Ok(reply.into_inner())
}

/// How a request to forget a replica went, per partition ([`forget_everywhere`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forgotten {
    /// Not a member (any more) of partition `.0`.
    Gone(u32),
    /// Still a member of partition `.0`: its leader heard from it within `--forget-after-secs`
    /// (or has not led that long); asked again.
    Heard(u32),
}

/// Asks every partition's leader (found among `servers`, Raft addresses) to forget replica
/// `id`, until it is no member of any partition or `deadline` passes; `progress` is told of
/// each answer. The number of partitions is found by asking for more until a replica says
/// there is no such partition.
pub async fn forget_everywhere(
    tls: Arc<crate::tls::Tls>,
    servers: &[String],
    id: u64,
    deadline: Instant,
    mut progress: impl FnMut(&Forgotten),
) -> Result<u32, MembershipError> {
    let body = postcard::to_stdvec(&vec![id]).map_err(|e| MembershipError::Raft(e.to_string()))?;
    let peers = PeerChannels::new(tls, None);
    let mut p = 0u32;
    loop {
        let mut last = String::from("no server answered");
        let mut answered = None;
        for addr in servers {
            match ask(&peers, addr, Ask::Forget, p, body.clone()).await {
                Ok(reply) => match postcard::from_bytes::<ForgetReply>(&reply.body) {
                    Ok(r) => {
                        answered = Some(r);
                        break;
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                },
                Err(s) if s.code() == tonic::Code::InvalidArgument && p > 0 => return Ok(p),
                Err(s) => last = format!("{addr}: {}", s.message()),
            }
        }
        let step = match answered {
            Some(r) if !r.members.contains(&id) => Forgotten::Gone(p),
            Some(_) => Forgotten::Heard(p),
            None => {
                if Instant::now() >= deadline {
                    return Err(MembershipError::NoAnswer { partition: p, last });
                }
                tokio::time::sleep(EVERY).await;
                continue;
            }
        };
        progress(&step);
        match step {
            Forgotten::Gone(_) => p += 1,
            Forgotten::Heard(_) if Instant::now() >= deadline => {
                return Err(MembershipError::StillHeard { partition: p, id })
            }
            Forgotten::Heard(_) => tokio::time::sleep(EVERY).await,
        }
    }
}

/// When a node started leading a partition, per term ([`Leading::for_term`]).
#[derive(Debug, Default)]
pub struct Leading(parking_lot::Mutex<std::collections::HashMap<u32, (u64, Instant)>>);

impl Leading {
    /// How long this node has led partition `p` in `term`, as far as it has been asked: the
    /// first question in a term starts the clock.
    pub fn for_term(&self, p: u32, term: u64) -> Duration {
        let mut map = self.0.lock();
        let entry = map.entry(p).or_insert((term, Instant::now()));
        if entry.0 != term {
            *entry = (term, Instant::now());
        }
        entry.1.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_members_entry_carries_both_addresses() {
        let n = member_node(&PeerAddr {
            raft: "a-3.a:7111".into(),
            api: "a-3.a:7110".into(),
        });
        assert_eq!(raft_addr(&n), "a-3.a:7111");
        assert_eq!(api_addr(&n), Some("a-3.a:7110"));
        let first = BasicNode::new("127.0.0.1:7001");
        assert_eq!(raft_addr(&first), "127.0.0.1:7001");
        assert_eq!(api_addr(&first), None);
    }

    #[test]
    fn leading_counts_from_the_first_question_in_a_term() {
        let l = Leading::default();
        assert!(l.for_term(0, 5) < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(20));
        assert!(l.for_term(0, 5) >= Duration::from_millis(20));
        assert!(
            l.for_term(0, 6) < Duration::from_millis(20),
            "a new term starts again"
        );
        assert!(
            l.for_term(1, 6) < Duration::from_millis(20),
            "per partition"
        );
    }
}
