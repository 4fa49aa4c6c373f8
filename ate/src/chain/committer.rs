//! The commit pipeline's two threads: the committer validates and appends batches in order,
//! the syncer fdatasyncs them and only then publishes and acknowledges (unless syncs are
//! deferred).

use super::{ChainOptions, Pending, Receipt, Shared};
use crate::queue::BatchQueue;
use crate::redo::LogError;
use crate::validate::check_stateful;
use crate::view::{locate, plan, Change, Staged};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A batch written to the log and waiting for its fdatasync.
#[derive(Debug)]
struct Appended {
    seq: u64,
    /// Entries not yet merged into the view and acknowledged (none once published at append).
    entries: Vec<(Pending, Vec<Change>, u64)>,
    /// Index of the batch's last transaction.
    last: u64,
    file: Arc<dyn crate::storage::StorageFile>,
    file_name: String,
}

/// Stage one: validate in order and append. The fdatasync happens in stage two, so the next
/// batch is validated and written while the previous one syncs (the disk and the CPU overlap).
/// With deferred syncs the batch is published and acknowledged here, right after the append.
pub(super) fn committer_loop(shared: Arc<Shared>, rx: &BatchQueue<Pending>, opts: ChainOptions) {
    let to_syncer = Arc::new(BatchQueue::<Appended>::new());
    let s = shared.clone();
    let q = to_syncer.clone();
    let deferred = opts.deferred_sync;
    let disposable = opts.log.disposable;
    let syncer = std::thread::Builder::new()
        .name(format!("ate-sync-{}", &shared.id.to_hex()[..8]))
        .spawn(move || syncer_loop(s, &q, deferred, disposable));
    let syncer = match syncer {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the sync thread; commits will fail");
            return;
        }
    };
    // Changes appended but not yet published, oldest first; consulted before the view.
    let mut inflight: std::collections::VecDeque<(u64, Vec<Change>)> = Default::default();
    let mut seq = 0u64;
    while let Some(batch) = rx.pop_batch(opts.max_batch, opts.max_batch_bytes, |p| p.bytes.len()) {
        let published = *shared.published.lock();
        while inflight.front().is_some_and(|(s, _)| *s <= published) {
            inflight.pop_front();
        }
        seq += 1;
        if let Some(appended) = append_batch(&shared, batch, &inflight, seq, deferred.is_some()) {
            if !appended.entries.is_empty() {
                let changes = appended
                    .entries
                    .iter()
                    .flat_map(|(_, c, _)| c.iter().cloned())
                    .collect();
                inflight.push_back((seq, changes));
            }
            if to_syncer.push(appended).is_err() {
                break;
            }
        }
    }
    to_syncer.close();
    // A deferred sync waiting out its delay syncs at once on the way out (taking the lock
    // first: the syncer checks for closing under it before it waits).
    drop(shared.sync_target.lock());
    shared.sync_cv.notify_all();
    let _ = syncer.join();
}

fn append_batch(
    shared: &Shared,
    batch: Vec<Pending>,
    inflight: &std::collections::VecDeque<(u64, Vec<Change>)>,
    seq: u64,
    publish_now: bool,
) -> Option<Appended> {
    let mut log = shared.log.lock();
    let mut accepted: Vec<(Pending, Vec<Change>)> = Vec::with_capacity(batch.len());
    {
        let view = shared.view.read();
        let mut staged = Staged::new(&view);
        for (_, changes) in inflight {
            staged.stage(changes);
        }
        let mut index = log.next_index();
        for p in batch {
            match check_stateful(&staged, &p.tx) {
                Ok(()) => {
                    let changes = plan(&staged, &p.tx, index);
                    staged.stage(&changes);
                    accepted.push((p, changes));
                    index += 1;
                }
                Err(e) => p.reply.send(Err(e.into())),
            }
        }
    }
    if accepted.is_empty() {
        return None;
    }
    let slices: Vec<&[u8]> = accepted.iter().map(|(p, _)| &p.bytes[..]).collect();
    match log.append(&slices) {
        Ok(locs) => {
            let (file, file_name) = log.sync_handle();
            let entries: Vec<_> = accepted
                .into_iter()
                .zip(locs)
                .map(|((p, mut changes), (index, at))| {
                    locate(&mut changes, at, &p.offsets);
                    (p, changes, index)
                })
                .collect();
            let last = entries.last().map_or(0, |e| e.2);
            let mut appended = Appended {
                seq,
                entries,
                last,
                file,
                file_name,
            };
            if publish_now {
                // Still under the log lock: a compaction never sees the log ahead of the view.
                publish(shared, std::slice::from_mut(&mut appended));
            }
            Some(appended)
        }
        Err(e) => {
            tracing::error!(error = %e, "group commit failed");
            for (p, _) in accepted {
                p.reply.send(Err(e.duplicate().into()));
            }
            None
        }
    }
}

/// Merges appended batches into the view, makes them readable and acknowledges them.
fn publish(shared: &Shared, batches: &mut [Appended]) {
    let Some(newest) = batches.last() else {
        return;
    };
    let (seq, last) = (newest.seq, newest.last);
    {
        let mut view = shared.view.write();
        for b in batches.iter_mut() {
            for (_, changes, index) in &mut b.entries {
                view.merge(*index, std::mem::take(changes));
            }
        }
    }
    *shared.published.lock() = seq;
    *shared.visible.lock() = last;
    shared.visible_cv.notify_all();
    shared.durable_cv.notify_all();
    for b in batches.iter_mut() {
        for (p, _, index) in std::mem::take(&mut b.entries) {
            let hash = p.hash;
            p.reply.send(Ok(Receipt { index, hash }));
        }
    }
}

/// Stage two: fdatasync, then (unless published at append) publish and acknowledge. Every
/// batch appended while the previous fdatasync ran shares the next one. With deferred syncs
/// it first waits up to the delay, or until [`Chain::sync`] asks for more than is on disk.
/// A disposable log is never synced: what it appended counts as durable at once.
fn syncer_loop(
    shared: Arc<Shared>,
    rx: &BatchQueue<Appended>,
    deferred: Option<Duration>,
    disposable: bool,
) {
    let mut failed: Option<LogError> = None;
    let mut synced_upto = *shared.durable.lock();
    while let Some(mut batches) = rx.pop_batch(usize::MAX, usize::MAX, |_| 0) {
        if let Some(delay) = deferred.filter(|_| !disposable) {
            let deadline = Instant::now() + delay;
            let mut target = shared.sync_target.lock();
            while *target <= synced_upto && !rx.is_closed() {
                if shared.sync_cv.wait_until(&mut target, deadline).timed_out() {
                    break;
                }
            }
            drop(target);
            batches.extend(rx.take_all());
        }
        if failed.is_none() && !disposable {
            // A batch list can span a segment roll: sync every file involved, oldest first.
            let mut synced: Vec<&str> = Vec::new();
            for b in batches.iter().rev() {
                if synced.contains(&b.file_name.as_str()) {
                    continue;
                }
                synced.push(&b.file_name);
                if let Err(source) = b.file.sync_data() {
                    tracing::error!(error = %source, file = %b.file_name, "fdatasync failed; the chain needs a reopen");
                    let e = LogError::Io {
                        op: "fdatasync",
                        file: b.file_name.clone(),
                        source,
                    };
                    // Reported before the log lock is taken: a compaction holding it waits
                    // for this batch and gives up on seeing the failure.
                    *shared.sync_failed.lock() = Some(e.duplicate());
                    shared.durable_cv.notify_all();
                    shared.log.lock().poison();
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = &failed {
            // Written after (or with) a failed fsync: never acknowledged, never published.
            for b in batches {
                for (p, _, _) in b.entries {
                    p.reply.send(Err(e.duplicate().into()));
                }
            }
            continue;
        }
        let last = batches.iter().map(|b| b.last).max().unwrap_or(synced_upto);
        // Durable before acknowledged: whoever hears of a commit finds it in subscriptions.
        synced_upto = synced_upto.max(last);
        *shared.durable.lock() = synced_upto;
        shared.durable_cv.notify_all();
        if deferred.is_none() {
            publish(&shared, &mut batches);
        }
    }
}
