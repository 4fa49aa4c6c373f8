//! The hashes commit entries carry (`Command::Commit::hash`) on the Raft transport: beside a
//! message's postcard body, in the `RaftRequest`'s `hashes` field, 32 bytes per commit entry
//! in the entries' order (all zeros for none). Had they been in the body, a replica of an
//! earlier version would have misread every message with a commit in it, and a rolling
//! upgrade would have stopped commits while the versions were mixed; an earlier replica
//! skips the field and hashes each transaction itself, a later one takes the hashes from it
//! (and hashes itself what comes without them).

use crate::types::{Command, Entry};
use openraft::EntryPayload;

const NONE: [u8; 32] = [0; 32];

fn commit_hash(e: &Entry) -> Option<Option<[u8; 32]>> {
    match &e.payload {
        EntryPayload::Normal(Command::Commit { hash, .. }) => Some(*hash),
        _ => None,
    }
}

/// The `hashes` field for `entries`: empty when none of them carries one.
pub fn of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<u8> {
    let hashes: Vec<Option<[u8; 32]>> = entries.into_iter().filter_map(commit_hash).collect();
    if hashes.iter().all(Option::is_none) {
        return Vec::new();
    }
    hashes.iter().flat_map(|h| h.unwrap_or(NONE)).collect()
}

/// Gives `entries` (decoded from a body, so without hashes) the ones `hashes` holds. A field
/// that does not hold one per commit entry is ignored whole: the entries are then hashed
/// where they are applied, as an earlier version's are.
pub fn attach<'a>(entries: impl IntoIterator<Item = &'a mut Entry>, hashes: &[u8]) {
    if hashes.is_empty() {
        return;
    }
    let commits: Vec<&mut Option<[u8; 32]>> = entries
        .into_iter()
        .filter_map(|e| match &mut e.payload {
            EntryPayload::Normal(Command::Commit { hash, .. }) => Some(hash),
            _ => None,
        })
        .collect();
    if hashes.len() != commits.len() * 32 {
        tracing::warn!(
            commits = commits.len(),
            bytes = hashes.len(),
            "a Raft message's hashes do not match its commit entries; hashing them here"
        );
        return;
    }
    for (slot, h) in commits.into_iter().zip(hashes.chunks_exact(32)) {
        *slot = <[u8; 32]>::try_from(h).ok().filter(|h| *h != NONE);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::types::LogId;
    use openraft::CommittedLeaderId;

    fn entry(index: u64, payload: EntryPayload<crate::types::TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn commit(index: u64, hash: Option<[u8; 32]>) -> Entry {
        entry(
            index,
            EntryPayload::Normal(Command::Commit {
                chain: [1; 16],
                tx: vec![index as u8; 10].into(),
                session: None,
                hash,
            }),
        )
    }

    fn hashes(entries: &[Entry]) -> Vec<Option<[u8; 32]>> {
        entries.iter().filter_map(commit_hash).collect()
    }

    /// The hashes survive the trip beside a body that carries none (postcard skips them), a
    /// commit without one stays without, other entries take no slot; a message whose
    /// entries carry none sends nothing, and a field that does not match is ignored.
    #[test]
    fn hashes_go_beside_the_body_and_come_back_to_their_entries() {
        let sent = vec![
            commit(1, Some([7; 32])),
            entry(2, EntryPayload::Blank),
            commit(3, None),
            commit(4, Some([9; 32])),
        ];
        let field = of(&sent);
        assert_eq!(field.len(), 3 * 32);
        let body = postcard::to_stdvec(&sent).unwrap();
        let mut got: Vec<Entry> = postcard::from_bytes(&body).unwrap();
        assert_eq!(hashes(&got), [None, None, None], "not in the body");
        attach(&mut got, &field);
        assert_eq!(hashes(&got), hashes(&sent));

        assert!(of(&[commit(1, None), entry(2, EntryPayload::Blank)]).is_empty());
        let mut short: Vec<Entry> = postcard::from_bytes(&body).unwrap();
        attach(&mut short, &field[..64]);
        assert_eq!(hashes(&short), [None, None, None]);
    }
}
