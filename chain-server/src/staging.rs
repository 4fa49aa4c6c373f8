//! Replication ahead of openraft's requests. openraft 0.9 sends a follower its next
//! AppendEntries only once the previous one is answered, so the transfer of one request and
//! the follower's append of the one before took turns: during a 512 MiB write a replication
//! round trip took 57 ms per 8 MiB, of which the follower's append was 25 ms
//! (`atefs_raft_replicate_seconds`, `atefs_raft_append_seconds`). So while a follower appends
//! one request, its leader already sends it the entries that come next (`Stage`); the request
//! that then carries them names them by log id (`AppendStaged`). A log id names one entry: the
//! leader of a term is the only one that makes entries of that term.

use crate::types::{Entry, TypeConfig};
use openraft::raft::AppendEntriesRequest;
use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most bytes of entries a follower holds staged per partition (the leader sends one request's
/// worth ahead at a time).
const STAGED_BYTES: usize = 64 << 20;

/// An AppendEntries whose entries may be named by log id instead of carried.
#[derive(Debug, Serialize, Deserialize)]
pub struct StagedAppend {
    /// The leader's vote.
    pub vote: Vote<u64>,
    /// The entry before the first.
    pub prev_log_id: Option<LogId<u64>>,
    /// The leader's commit index.
    pub leader_commit: Option<LogId<u64>>,
    /// The entries, in order.
    pub entries: Vec<Slot>,
}

/// One entry of a [`StagedAppend`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Slot {
    /// Carried.
    Full(Entry),
    /// Sent ahead with `Stage`.
    Staged(LogId<u64>),
}

impl StagedAppend {
    /// The entries it carries.
    pub fn full(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter_map(|s| match s {
            Slot::Full(e) => Some(e),
            Slot::Staged(_) => None,
        })
    }

    /// The entries it carries, to give them what came beside the message.
    pub fn full_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.entries.iter_mut().filter_map(|s| match s {
            Slot::Full(e) => Some(e),
            Slot::Staged(_) => None,
        })
    }

    /// `rpc` with the entries in `held` named by log id; `None` when it holds none of them.
    pub fn of(
        rpc: &AppendEntriesRequest<TypeConfig>,
        held: &BTreeMap<u64, LogId<u64>>,
    ) -> Option<Self> {
        let is_held = |e: &Entry| held.get(&e.log_id.index) == Some(&e.log_id);
        if !rpc.entries.iter().any(is_held) {
            return None;
        }
        let entries = rpc
            .entries
            .iter()
            .map(|e| {
                if is_held(e) {
                    Slot::Staged(e.log_id)
                } else {
                    Slot::Full(e.clone())
                }
            })
            .collect();
        Some(Self {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
            entries,
        })
    }

    /// How many entries it names instead of carrying.
    pub fn named(&self) -> usize {
        self.entries
            .iter()
            .filter(|s| matches!(s, Slot::Staged(_)))
            .count()
    }
}

/// Bytes an entry takes in memory, roughly: its transaction and a little.
fn size(e: &Entry) -> usize {
    crate::log_store::tx_len(e) + 64
}

/// A follower's entries received ahead of the requests that name them, by index.
#[derive(Debug, Default)]
pub struct Staged {
    entries: BTreeMap<u64, Entry>,
    bytes: usize,
    /// Entries requests took from here so far (for /metrics).
    pub used: u64,
    /// Requests that named an entry not held (the leader then sent them in full).
    pub missing: u64,
}

impl Staged {
    /// Holds `entries` (an entry at an index already held replaces it); beyond the bound the
    /// lowest indexes go first.
    pub fn insert(&mut self, entries: Vec<Entry>) {
        for e in entries {
            self.bytes += size(&e);
            if let Some(old) = self.entries.insert(e.log_id.index, e) {
                self.bytes -= size(&old);
            }
        }
        while self.bytes > STAGED_BYTES {
            let Some((_, old)) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= size(&old);
        }
    }

    /// The AppendEntries `req` stands for, its named entries taken from here (with everything
    /// staged below them, which no later request needs); `Err` names an entry not held (then
    /// nothing is taken).
    pub fn resolve(
        &mut self,
        req: StagedAppend,
    ) -> Result<AppendEntriesRequest<TypeConfig>, LogId<u64>> {
        for slot in &req.entries {
            if let Slot::Staged(id) = slot {
                if self.entries.get(&id.index).map(|e| e.log_id) != Some(*id) {
                    self.missing += 1;
                    return Err(*id);
                }
            }
        }
        let mut entries = Vec::with_capacity(req.entries.len());
        for slot in req.entries {
            entries.push(match slot {
                Slot::Full(e) => e,
                Slot::Staged(id) => {
                    let Some(e) = self.entries.remove(&id.index) else {
                        return Err(id);
                    };
                    self.bytes -= size(&e);
                    self.used += 1;
                    e
                }
            });
        }
        if let Some(last) = entries.last().map(|e| e.log_id.index) {
            let keep = self.entries.split_off(&(last + 1));
            let dropped = std::mem::replace(&mut self.entries, keep);
            self.bytes -= dropped.values().map(size).sum::<usize>();
        }
        Ok(AppendEntriesRequest {
            vote: req.vote,
            prev_log_id: req.prev_log_id,
            leader_commit: req.leader_commit,
            entries,
        })
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::Commit {
                chain: [7; 16],
                tx: vec![index as u8; bytes].into(),
                session: None,
                hash: None,
            }),
        }
    }

    fn rpc(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    fn held(entries: &[Entry]) -> BTreeMap<u64, LogId<u64>> {
        entries.iter().map(|e| (e.log_id.index, e.log_id)).collect()
    }

    #[test]
    fn named_entries_come_back_whole_and_in_order() {
        let all: Vec<Entry> = (1..=5).map(|i| entry(2, i, 100)).collect();
        let mut staged = Staged::default();
        staged.insert(all[1..4].to_vec());
        let req = StagedAppend::of(&rpc(all.clone()), &held(&all[1..4])).unwrap();
        assert_eq!(req.named(), 3);
        assert!(
            StagedAppend::of(&rpc(all.clone()), &BTreeMap::new()).is_none(),
            "nothing held, nothing to name"
        );
        let back = staged.resolve(req).unwrap();
        assert_eq!(back.entries, all);
        assert!(staged.is_empty());
        assert_eq!((staged.used, staged.missing), (3, 0));
    }

    #[test]
    fn an_entry_of_another_term_or_not_held_is_refused_and_nothing_is_taken() {
        let mut staged = Staged::default();
        staged.insert(vec![entry(2, 1, 10), entry(2, 2, 10)]);
        // The leader of term 3 made another entry 2.
        let other = vec![entry(2, 1, 10), entry(3, 2, 10)];
        let req = StagedAppend::of(&rpc(other.clone()), &held(&other)).unwrap();
        let missing = staged.resolve(req).unwrap_err();
        assert_eq!(missing, other[1].log_id);
        assert_eq!(staged.len(), 2);
        let req = StagedAppend::of(&rpc(vec![entry(2, 3, 10)]), &held(&[entry(2, 3, 10)])).unwrap();
        assert!(staged.resolve(req).is_err());
        assert_eq!(staged.len(), 2);
        assert_eq!((staged.used, staged.missing), (0, 2));
    }

    #[test]
    fn staging_is_bounded_and_what_a_request_passed_is_dropped() {
        let mut staged = Staged::default();
        let big = 20 << 20;
        staged.insert((1..=5).map(|i| entry(2, i, big)).collect());
        // 100 MiB offered, 64 MiB kept: the highest indexes.
        assert_eq!(staged.len(), 3);
        let req =
            StagedAppend::of(&rpc(vec![entry(2, 4, big)]), &held(&[entry(2, 4, big)])).unwrap();
        staged.resolve(req).unwrap();
        assert_eq!(staged.len(), 1, "entry 3 is below the request and goes");
        assert_eq!(staged.bytes, size(&entry(2, 5, big)));
    }
}
