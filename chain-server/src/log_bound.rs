//! Keeps a partition's disk in proportion to the data its chains hold, as `--snapshot-every`
//! keeps its log within entries. Entries alone bounded nothing: 20,000 of a volume's 8 MiB
//! commits are 160 GB, and since a quota counts what a chain holds, not what it was sent, a
//! chain whose files are rewritten may be sent without end.
//!
//! A snapshot is taken when the partition's files hold more than twice what a fresh snapshot
//! would (its chains' live payloads plus at most 256 bytes per record) plus `bound`: old versions and deleted records make up that much. Data written once
//! and kept is not copied again (a volume being filled takes no snapshot for its bytes), and
//! each snapshot comes after at least its own size in garbage was written, so the copying
//! costs O(1) per byte written. Of the log a snapshot covers, `bound` bytes are kept for
//! mounts that lag. A partition then holds at most about twice its data plus twice `bound`
//! and a segment.
//!
//! A chain's owner can ask for more (`Compact`, after changing a volume's keys): a snapshot
//! past that request, and then none of the log up to it kept, whatever the bound says, so
//! that the old versions of the chain's records leave this replica's disk.

use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::types::Raft;

/// How often a partition's log is measured against its bound.
const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A partition's sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// The current snapshot file.
    pub snapshot: u64,
    /// The log past the snapshot.
    pub since: u64,
    /// About what a fresh snapshot would take, erring high (`View::snapshot_estimate` of
    /// every chain): an estimate that errs low would take snapshots that free nothing.
    pub fresh: u64,
}

/// Whether a snapshot would free enough to be taken now. At least a 64th of `bound` must
/// have been written since the last one, so that an estimate that errs low costs one
/// snapshot per so many bytes written, not one a second.
pub fn wants_snapshot(s: Sizes, bound: u64) -> bool {
    s.since > bound / 64
        && s.snapshot.saturating_add(s.since) > s.fresh.saturating_mul(2).saturating_add(bound)
}

/// Runs the check of one partition every second until the node shuts down. Each replica
/// bounds its own files; openraft builds one snapshot at a time and purges only what no
/// follower still needs, so asking again every second is safe.
pub async fn keep(
    raft: Raft,
    log: LogStore,
    sm: StateMachine,
    bound: u64,
    data: std::path::PathBuf,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (snapshot, purged) = {
            let m = raft.metrics();
            let m = m.borrow();
            (
                m.snapshot.map_or(0, |l| l.index),
                m.purged.map_or(0, |l| l.index),
            )
        };
        let (log2, sm2) = (log.clone(), sm.clone());
        let Ok((sizes, point)) = tokio::task::spawn_blocking(move || {
            let sizes = Sizes {
                snapshot: sm2.snapshot_bytes(),
                since: log2.bytes_around(snapshot).1,
                fresh: sm2.snapshot_estimate(),
            };
            (sizes, log2.purge_point(snapshot, bound))
        })
        .await
        else {
            return;
        };
        // A snapshot needs room for its copy; without it, it would only fill the disk
        // (and be dropped: state_machine.rs).
        let room = || crate::disk::free_bytes(&data).map_or(true, |free| free > sizes.fresh);
        // An owner's `Compact`: a snapshot past it, then none of the log up to it kept.
        let compact = sm.compact_past();
        let asked = if compact > snapshot && room() {
            tracing::info!(
                past = compact,
                "a chain's owner asked for compaction: snapshot"
            );
            raft.trigger().snapshot().await
        } else if compact > purged && snapshot >= compact {
            tracing::info!(
                upto = compact,
                "a chain's owner asked for compaction: purge"
            );
            raft.trigger().purge_log(compact).await
        } else if wants_snapshot(sizes, bound) && room() {
            tracing::debug!(?sizes, bound, "garbage over the bound: snapshot");
            raft.trigger().snapshot().await
        } else if let Some(upto) = point.filter(|u| *u > purged) {
            tracing::debug!(upto, bound, "log a snapshot covers over the bound: purge");
            raft.trigger().purge_log(upto).await
        } else {
            Ok(())
        };
        if asked.is_err() {
            return; // shut down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const BOUND: u64 = 256 * MIB;

    /// Sizes of a partition holding `live` bytes in blocks of 64 KiB.
    fn sizes(snapshot: u64, since: u64, live: u64) -> Sizes {
        Sizes {
            snapshot,
            since,
            fresh: live + live / (64 << 10) * 256,
        }
    }

    #[test]
    fn data_written_once_is_not_copied_again() {
        // A volume filled with 10 GiB in one go, from empty or beside 10 GiB already held.
        assert!(!wants_snapshot(sizes(0, 10 << 30, 10 << 30), BOUND));
        assert!(!wants_snapshot(sizes(10 << 30, 10 << 30, 20 << 30), BOUND));
    }

    #[test]
    fn rewrites_snapshot_once_their_old_versions_pass_the_data_and_the_bound() {
        let held = 64 * MIB;
        let snap = held + held / (64 << 10) * 100;
        // 64 MiB held, rewritten: not yet at 64 + 256 MiB of old versions...
        assert!(!wants_snapshot(sizes(snap, 300 * MIB, held), BOUND));
        // ...then yes.
        assert!(wants_snapshot(sizes(snap, 400 * MIB, held), BOUND));
        // Right after the snapshot, nothing to free.
        assert!(!wants_snapshot(sizes(snap, 0, held), BOUND));
    }

    #[test]
    fn deleted_data_is_given_back_once_something_is_written() {
        // 10 GiB in the snapshot, all of it deleted since.
        assert!(!wants_snapshot(sizes(10 << 30, MIB, 0), BOUND));
        assert!(wants_snapshot(sizes(10 << 30, 5 * MIB, 0), BOUND));
    }

    #[test]
    fn an_estimate_that_errs_low_costs_a_snapshot_per_64th_of_the_bound() {
        // Records far larger than estimated: the fresh snapshot is 3x the estimate.
        let s = Sizes {
            snapshot: 3 * BOUND,
            since: BOUND / 64,
            fresh: BOUND,
        };
        assert!(!wants_snapshot(s, BOUND));
        let s = Sizes {
            since: BOUND / 64 + 1,
            ..s
        };
        assert!(wants_snapshot(s, BOUND));
    }
}
