//! Free space on a replica's disk, and what a leader admits as it runs out.
//!
//! A Raft follower cannot refuse an entry its leader sends: one whose disk is full stops its
//! Raft core (openraft treats a failed append as fatal), and when every replica's disk is
//! about as full as the others (a StatefulSet gives each the same size) the whole partition
//! stops, and a mount sees its writes hang and then fail with EIO. So the leader refuses
//! commits while there is still room, with a code the mount turns into ENOSPC: below the
//! reserve, a commit is taken only if it makes the chain hold less (a deletion, a truncation:
//! what frees space once a snapshot drops the old records); below half the reserve, none.
//!
//! The leader judges by the fullest replica, not by its own disk: a follower on a smaller or
//! fuller disk would otherwise fill and stop while the leader still had room. Each follower
//! says how much room it has in every answer to the Raft transport (`RaftReply.disk_free`),
//! and the leader keeps what it last heard from each ([`PeerRoom`]). A follower not heard from
//! lately (down, cut off, its partition stopped) is left out: it takes no entries either.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes this (unprivileged) process may still write on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let v = rustix::fs::statvfs(path)?;
    Ok(v.f_bavail.saturating_mul(v.f_frsize))
}

/// What a leader does with a commit of `len` bytes when `free` bytes are left and it keeps
/// `reserve` in reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Room enough: take it.
    Any,
    /// Take it only if it frees space.
    Freeing,
    /// Refuse it.
    None,
}

/// The rule above (no reserve: everything is taken).
pub fn admit(free: u64, reserve: u64, len: u64) -> Admit {
    if reserve == 0 || free >= reserve.saturating_add(len) {
        Admit::Any
    } else if free >= (reserve / 2).saturating_add(len) {
        Admit::Freeing
    } else {
        Admit::None
    }
}

/// The room each peer last reported, shared by a node's partitions (they share its disk).
#[derive(Debug, Clone, Default)]
pub struct PeerRoom(Arc<parking_lot::Mutex<HashMap<u64, (u64, Instant)>>>);

/// How recent a peer's report must be to count: many heartbeats.
pub const FRESH: Duration = Duration::from_secs(5);

impl PeerRoom {
    /// `peer` reported `free` bytes just now.
    pub fn note(&self, peer: u64, free: u64) {
        self.0.lock().insert(peer, (free, Instant::now()));
    }

    /// The peer with the least room among those heard from within `fresh`, and its room.
    pub fn fullest(&self, fresh: Duration) -> Option<(u64, u64)> {
        // Asked on every commit: no list built.
        within(&self.0.lock(), fresh).min_by_key(|(peer, free)| (*free, *peer))
    }

    /// Whether `peer` answered within `d` (any answer from a running partition reports).
    pub fn heard_within(&self, peer: u64, d: Duration) -> bool {
        within(&self.0.lock(), d).any(|(p, _)| p == peer)
    }

    /// The room of each peer heard from within `fresh`, by peer.
    pub fn reports(&self, fresh: Duration) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = within(&self.0.lock(), fresh).collect();
        v.sort_unstable();
        v
    }
}

/// (peer, room) of the reports younger than `d`.
fn within(
    reports: &HashMap<u64, (u64, Instant)>,
    d: Duration,
) -> impl Iterator<Item = (u64, u64)> + '_ {
    reports
        .iter()
        .filter(move |(_, (_, at))| at.elapsed() < d)
        .map(|(peer, (free, _))| (*peer, *free))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fullest_peer_heard_from_lately_counts() {
        let room = PeerRoom::default();
        assert_eq!(room.fullest(FRESH), None);
        room.note(2, 500);
        room.note(3, 100);
        assert_eq!(room.fullest(FRESH), Some((3, 100)));
        room.note(3, 900);
        assert_eq!(room.fullest(FRESH), Some((2, 500)));
        assert_eq!(
            room.fullest(Duration::ZERO),
            None,
            "no report is that fresh"
        );
        assert_eq!(room.reports(FRESH), vec![(2, 500), (3, 900)]);
        assert!(room.heard_within(2, FRESH));
        assert!(!room.heard_within(4, FRESH), "never heard from");
        assert!(!room.heard_within(2, Duration::ZERO));
    }

    #[test]
    fn commits_are_refused_in_two_steps_as_the_disk_fills() {
        let mib = 1 << 20;
        assert_eq!(admit(100 * mib, 64 * mib, mib), Admit::Any);
        assert_eq!(admit(65 * mib, 64 * mib, mib), Admit::Any);
        assert_eq!(admit(64 * mib, 64 * mib, mib), Admit::Freeing);
        assert_eq!(admit(33 * mib, 64 * mib, mib), Admit::Freeing);
        assert_eq!(admit(32 * mib, 64 * mib, mib), Admit::None);
        assert_eq!(admit(0, 0, mib), Admit::Any);
    }

    #[test]
    fn the_free_space_of_a_directory_is_read() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).is_ok());
        assert!(free_bytes(Path::new("/no/such/directory")).is_err());
    }
}
