//! Free space on a replica's disk, and what a leader admits as it runs out.
//!
//! A Raft follower cannot refuse an entry its leader sends: one whose disk is full stops its
//! Raft core (openraft treats a failed append as fatal), and when every replica's disk is
//! about as full as the others (a StatefulSet gives each the same size) the whole partition
//! stops, and a mount sees its writes hang and then fail with EIO. So the leader refuses
//! commits while there is still room, with a code the mount turns into ENOSPC: below the
//! reserve, a commit is taken only if it makes the chain hold less (a deletion, a truncation:
//! what frees space once a snapshot drops the old records); below half the reserve, none.

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
