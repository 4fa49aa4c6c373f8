//! A running cache taking its upstream's image of the chain: when the cluster compacted away
//! transactions the cache has not had yet, the image (a snapshot) replaces the cache's log
//! and view at once, and the cache goes on from the image's index.

use super::{Chain, ChainError, Replay};
use crate::redo::{read_snapshot, snapshot_name, LogError};
use crate::view::View;

impl Chain {
    /// Replaces this chain's contents with the image in the snapshot file `name` (in the
    /// chain's storage; it covers indexes up to `last`) and goes on from `last + 1`. Returns
    /// false, leaving everything as it was, when the image is not ahead of the chain.
    ///
    /// For a cache of an upstream whose follower fell behind the upstream's log: the caller
    /// is the one that appends (the follower), so nothing is appended meanwhile. Readers see
    /// the old state until the switch and the image after it; a read that looked a record up
    /// before the switch and reads it after finds its file gone and looks again (as after a
    /// compaction). Record versions never go back in an image, so whatever a reader cached by
    /// version stays right.
    pub fn install_image(&self, name: &str, last: u64) -> Result<bool, ChainError> {
        // Compactions and frozen copies hold this while they read payloads in place.
        let _one = self.shared.compacting.lock();
        if last <= self.last_index() {
            return Ok(false);
        }
        let storage = self.shared.files.storage.clone();
        let file = storage
            .open(name, false)
            .map_err(LogError::io("open", name))?;
        let mut none = |_, _| {};
        let mut replay = Replay {
            view: View::new(self.shared.id),
            progress: &mut none,
        };
        let chain = read_snapshot(file.as_ref(), last, &mut replay)?;
        if chain != self.shared.id {
            return Err(LogError::WrongChain(format!(
                "{name} is an image of chain {chain}, not of {}",
                self.shared.id
            ))
            .into());
        }
        let view = replay.view;
        let final_name = snapshot_name(last);
        if name != final_name {
            storage
                .rename(name, &final_name)
                .map_err(LogError::io("rename", name))?;
        }
        let mut log = self.shared.log.lock();
        let have = log.next_index() - 1;
        if last <= have {
            if name != final_name {
                let _ = storage.remove(&final_name);
            }
            return Ok(false);
        }
        // Publishing a batch happens after its append: let the last one land first, so that
        // nothing is merged into the view after it was replaced.
        self.shared
            .wait_reaching(&self.shared.visible, &self.shared.visible_cv, have)?;
        log.restart_at(file, last)?;
        *self.shared.view.write() = view;
        for counter in [
            &self.shared.durable,
            &self.shared.visible,
            &self.shared.sync_target,
        ] {
            let mut c = counter.lock();
            *c = (*c).max(last);
        }
        drop(log);
        self.shared.visible_cv.notify_all();
        self.shared.durable_cv.notify_all();
        tracing::info!(chain = %self.shared.id, had = have, last, "took the upstream's image of the chain");
        Ok(true)
    }
}
