//! One chain-server process: its partitions (a Raft group each, all over the same peers) and
//! the static peer list.

use crate::log_store::{LogStore, LogStoreError};
use crate::network::Network;
use crate::state_machine::StateMachine;
use crate::tls::Tls;
use crate::types::Raft;
use ate::storage::FileStorage;
use ate::ChainId;
use openraft::{BasicNode, Config, SnapshotPolicy};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A peer's two addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    /// host:port of its Raft transport.
    pub raft: String,
    /// host:port of its client API.
    pub api: String,
}

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (a key of `peers`).
    pub id: u64,
    /// Every replica, this one included.
    pub peers: BTreeMap<u64, PeerAddr>,
    /// Partitions in the cluster (fixed for its lifetime).
    pub partitions: u32,
    /// Where the partitions live.
    pub data: PathBuf,
    /// Raft log segment size.
    pub segment_bytes: u64,
    /// Entries between snapshots.
    pub snapshot_every: u64,
    /// Garbage allowed beside the data, and log kept for lagging mounts, in bytes:
    /// [`crate::log_bound`].
    pub snapshot_log_bytes: u64,
    /// Heartbeat interval in ms (elections time out after 3-6 of these).
    pub heartbeat_ms: u64,
    /// Source address for connections to peers (None: the system's choice).
    pub source_ip: Option<std::net::IpAddr>,
    /// Free disk space a leader keeps: below it, commits that would grow a chain are refused
    /// (RESOURCE_EXHAUSTED), below half of it every commit ([`crate::disk`]).
    pub disk_reserve: u64,
    /// How long a leader must not have heard from a member that some replica's list leaves
    /// out before removing it ([`crate::membership`]).
    pub forget_after: std::time::Duration,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory.
    #[error("data directory {0}: {1}")]
    Data(PathBuf, std::io::Error),
    /// A partition's log.
    #[error("partition {0} log: {1}")]
    Log(u32, LogStoreError),
    /// A partition's state machine.
    #[error("partition {0} state: {1}")]
    State(u32, ate::redo::LogError),
    /// openraft refused the configuration or failed to start.
    #[error("raft: {0}")]
    Raft(String),
    /// This node is not in the peer list.
    #[error("node {0} is not in the peer list")]
    NotAPeer(u64),
}

/// One partition on this node.
#[derive(Clone)]
pub struct Partition {
    /// Its number.
    pub id: u32,
    /// Its Raft handle.
    pub raft: Raft,
    /// Its log.
    pub log: LogStore,
    /// Its state machine.
    pub sm: StateMachine,
    /// Replication round trips per follower (while this node leads).
    pub replication: crate::metrics::PeerTimings,
    /// Entries a leader sent ahead, until the request that names them comes.
    pub staged: Arc<parking_lot::Mutex<crate::staging::Staged>>,
    /// Until when this replica refuses to vote: set when it starts without a saved vote. A
    /// wiped replica has forgotten whom it voted for; had it voted in a term still being
    /// decided, a second vote in that term could elect two leaders. Any election that was
    /// open when its disk went is over (won, or timed out into a higher term) after twice
    /// the longest election timeout.
    pub vote_hold_off: Option<std::time::Instant>,
    /// When a leader's request (entries, a heartbeat, a snapshot chunk) last came.
    pub leader_contact: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
    /// Transactions sent to subscribers: [in full, by hash to their own writer session].
    pub fed: Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// Subscriptions served now, by chain.
    pub subscribers: Arc<crate::subscribe::Subscribers>,
}

impl Partition {
    /// The leader this replica knows of; None once its Raft core has stopped (the metrics
    /// then keep the leader it knew last, often itself, and a client sent there would never
    /// be told otherwise).
    pub fn leader(&self) -> Option<u64> {
        known_leader(&self.raft.metrics().borrow())
    }

    /// Notes a request from a leader.
    pub fn leader_called(&self) {
        *self.leader_contact.lock() = Some(std::time::Instant::now());
    }

    /// Whether a leader's request came within `d`.
    pub fn heard_from_leader_within(&self, d: std::time::Duration) -> bool {
        self.leader_contact.lock().is_some_and(|t| t.elapsed() < d)
    }

    /// Why its Raft core stopped, if it did: a storage error (a full or failing disk). It
    /// takes no part in the group until the replica is restarted.
    pub fn stopped(&self) -> Option<String> {
        self.raft
            .metrics()
            .borrow()
            .running_state
            .as_ref()
            .err()
            .map(|e| e.to_string())
    }
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The leader a partition's metrics name, unless its Raft core stopped ([`Partition::leader`]).
pub fn known_leader(m: &openraft::RaftMetrics<u64, BasicNode>) -> Option<u64> {
    m.running_state.as_ref().ok().and(m.current_leader)
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// The configuration it runs with.
    pub config: NodeConfig,
    /// Its partitions, by number.
    pub partitions: Vec<Partition>,
    /// The room on its peers' disks, as they last reported it ([`crate::disk`]).
    pub peer_room: crate::disk::PeerRoom,
    /// Since when it leads each partition ([`crate::membership::forget`]).
    pub leading: crate::membership::Leading,
    /// Its connections to its peers' Raft services.
    pub peers: crate::network::PeerChannels,
}

/// The partition a chain lives in.
pub fn partition_of(chain: &ChainId, partitions: u32) -> u32 {
    let h = blake3::hash(&chain.0);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) % u64::from(partitions.max(1))) as u32
}

impl Node {
    /// Opens every partition and starts its Raft group. Nothing is initialised: see
    /// [`Node::bootstrap`].
    pub async fn start(config: NodeConfig, tls: Arc<Tls>) -> Result<Arc<Self>, NodeError> {
        if !config.peers.contains_key(&config.id) {
            return Err(NodeError::NotAPeer(config.id));
        }
        let raft_config = Arc::new(
            Config {
                cluster_name: "atefs".into(),
                heartbeat_interval: config.heartbeat_ms,
                election_timeout_min: config.heartbeat_ms * 3,
                election_timeout_max: config.heartbeat_ms * 6,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
                // Subscribers (mount caches) read the log: keep a snapshot interval of it, so
                // one that lags by less than that never needs a state transfer.
                max_in_snapshot_log_to_keep: config.snapshot_every,
                purge_batch_size: 1,
                // openraft bounds one AppendEntries by the heartbeat interval: keep it to what a
                // follower writes and fdatasyncs in that time even for 1 MiB transactions.
                max_payload_entries: 32,
                // A snapshot goes in chunks of 3 MiB, and one chunk not answered in time ends
                // the transfer, which starts again from the first byte: openraft's 200 ms
                // let one slow write (or the last chunk's install: a sync of the whole file)
                // restart a large transfer for ever. As long as a replication request may take.
                install_snapshot_timeout: crate::network::OUTLIVE.as_millis() as u64,
                ..Default::default()
            }
            .validate()
            .map_err(|e| NodeError::Raft(e.to_string()))?,
        );
        let channels = crate::network::PeerChannels::new(tls, config.source_ip);
        let peer_room = crate::disk::PeerRoom::default();
        let mut partitions = Vec::new();
        for p in 0..config.partitions {
            let dir = config.data.join(format!("partition-{p}"));
            let storage = |sub: &str| {
                FileStorage::new(dir.join(sub)).map_err(|e| NodeError::Data(dir.join(sub), e))
            };
            let log = LogStore::open(Arc::new(storage("log")?), config.segment_bytes)
                .map_err(|e| NodeError::Log(p, e))?;
            let sm = StateMachine::open(Arc::new(storage("state")?), log.clone())
                .map_err(|e| NodeError::State(p, e))?;
            let network = Network::new(p, channels.clone(), peer_room.clone(), log.clone());
            let replication = network.replication_timings();
            let raft = Raft::new(
                config.id,
                raft_config.clone(),
                network,
                log.clone(),
                sm.clone(),
            )
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
            tokio::spawn(follow_replication(raft.metrics(), log.clone()));
            tokio::spawn(crate::log_bound::keep(
                raft.clone(),
                log.clone(),
                sm.clone(),
                config.snapshot_log_bytes,
                dir.clone(),
            ));
            let vote_hold_off = (!log.has_vote()).then(|| {
                std::time::Instant::now()
                    + std::time::Duration::from_millis(raft_config.election_timeout_max * 2)
            });
            partitions.push(Partition {
                id: p,
                raft,
                log,
                sm,
                replication,
                staged: Default::default(),
                vote_hold_off,
                leader_contact: Default::default(),
                fed: Default::default(),
                subscribers: Default::default(),
            });
        }
        Ok(Arc::new(Self {
            config,
            partitions,
            peer_room,
            leading: Default::default(),
            peers: channels,
        }))
    }

    /// Initialises every partition with all peers as voters, on a cluster's very first start.
    /// Partitions that are already initialised are left alone.
    pub async fn bootstrap(&self) -> Result<(), NodeError> {
        let members: BTreeMap<u64, BasicNode> = self
            .config
            .peers
            .iter()
            .map(|(id, a)| (*id, BasicNode::new(&a.raft)))
            .collect();
        for p in &self.partitions {
            if p.raft
                .is_initialized()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?
            {
                continue;
            }
            if let Err(e) = p.raft.initialize(members.clone()).await {
                tracing::warn!(partition = p.id, error = %e, "bootstrap skipped");
            }
        }
        Ok(())
    }

    /// The partition holding `chain`.
    pub fn partition(&self, chain: &ChainId) -> &Partition {
        let p = partition_of(chain, self.config.partitions) as usize;
        &self.partitions[p.min(self.partitions.len() - 1)]
    }

    /// The API address of replica `id`, a member of `p`: from the peer list, else from the
    /// membership (a replica that joined later and is not on this one's list).
    pub fn api_addr(&self, p: &Partition, id: u64) -> Option<String> {
        if let Some(a) = self.config.peers.get(&id) {
            return Some(a.api.clone());
        }
        let metrics = p.raft.metrics();
        let m = metrics.borrow();
        let node = m.membership_config.membership().get_node(&id)?;
        crate::membership::api_addr(node).map(str::to_string)
    }

    /// How long a follower may go without a leader's request before it doubts it is still a
    /// member (a replica removed while it was down keeps the membership it knew): a dozen
    /// heartbeats.
    pub fn quiet_leader(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.heartbeat_ms.saturating_mul(12))
    }

    /// Why the node is not ready, for people; None when it is (a voter of every partition,
    /// each with a leader). A replica added after the cluster's first start is ready once it
    /// has joined every partition ([`crate::membership`]).
    pub fn not_ready(&self) -> Option<String> {
        let id = self.config.id;
        self.partitions.iter().find_map(|p| {
            let metrics = p.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            if voters.is_empty() {
                Some(format!(
                    "partition {} has no members here yet: waiting for the cluster's first start, or asking its leader to join",
                    p.id
                ))
            } else if voters.contains(&id) {
                match known_leader(&m) {
                    None => Some(format!("partition {} has no leader", p.id)),
                    // As long as one replication request may take: a follower on a slow disk
                    // hears nothing while it writes, and is no less ready for it.
                    Some(l) if l != id && !p.heard_from_leader_within(crate::network::OUTLIVE) => {
                        Some(format!(
                            "partition {}: no word from its leader (replica {l}) since this replica started or for {:?}; asking to join in case it no longer counts this replica a member",
                            p.id,
                            crate::network::OUTLIVE
                        ))
                    }
                    Some(_) => None,
                }
            } else if membership.get_node(&id).is_some() {
                Some(format!(
                    "this replica (id {id}) is catching up as a learner of partition {} (voters {voters:?}); it becomes a voter once it holds the log",
                    p.id
                ))
            } else {
                Some(format!(
                    "this replica (id {id}) is not a member of partition {} (voters {voters:?}): asking its leader to join",
                    p.id
                ))
            }
        })
    }

    /// The liveness condition: every partition's Raft core runs. One stopped by a storage
    /// error stays stopped while the process lives, so the replica must be restarted (by the
    /// kubelet, on this answer) once the disk has room again.
    pub fn live(&self) -> Result<(), String> {
        match self
            .partitions
            .iter()
            .find_map(|p| p.stopped().map(|e| (p.id, e)))
        {
            None => Ok(()),
            Some((id, e)) => Err(format!("partition {id} stopped: {e}")),
        }
    }

    /// Stops every Raft group.
    pub async fn shutdown(&self) {
        for p in &self.partitions {
            if let Err(e) = p.raft.shutdown().await {
                tracing::warn!(partition = p.id, error = %e, "raft shutdown");
            }
        }
    }
}

/// Tells `log` how far every follower has got while this node leads, so that it keeps in memory
/// what it will send again.
async fn follow_replication(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
    log: LogStore,
) {
    loop {
        let floor = metrics
            .borrow_and_update()
            .replication
            .as_ref()
            .and_then(|r| r.values().map(|m| m.map_or(0, |l| l.index)).min())
            .unwrap_or(u64::MAX);
        log.replicated(floor);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
