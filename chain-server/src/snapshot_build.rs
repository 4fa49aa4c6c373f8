//! Writing a partition's snapshot without holding its state machine: the records' list is
//! taken under the lock (`Inner::plan_snapshot`), the payloads are copied here while commits
//! are applied, and the views are pointed at the new file under the lock again
//! (`Inner::finish_snapshot`). Holding the lock throughout stalled every commit of the
//! partition for as long as copying its data took, and snapshots come with rewrites now
//! (`log_bound.rs`).

use crate::state_machine::{read_payload, ChainHead, Footer, FooterMore, SNAP_MAGIC};
use ate::redo::{Files, Location, LogError, SnapshotWriter};
use ate::storage::{Storage, StorageFile};
use ate::{ChainId, RecordKey, RootAuthority};
use openraft::{BasicNode, SnapshotMeta};
use std::sync::Arc;

/// One chain as the snapshot will hold it.
pub(crate) struct PlannedChain {
    pub id: ChainId,
    pub root: Option<RootAuthority>,
    pub genesis: Option<ate::TxHash>,
    /// Everything but where its section lies.
    pub head: ChainHead,
    pub records: Vec<(RecordKey, ate::view::RecordEntry)>,
}

/// What a snapshot copies, as of one applied index.
pub(crate) struct Planned {
    pub meta: SnapshotMeta<u64, BasicNode>,
    pub chains: Vec<PlannedChain>,
    /// The log's segments (payloads after the last snapshot lie there; nothing the plan names
    /// is purged before this snapshot is done: purges wait for it).
    pub log: Arc<Files>,
    /// The snapshot file the plan's other payloads lie in (one received meanwhile may take
    /// its place: what is copied from it then is dropped, `generation`).
    pub snapshots: Arc<Files>,
    /// Which snapshot the state stood on (a different one at the end: this one is dropped).
    pub generation: u64,
}

/// Where each payload went: per chain, (record, where it was, its offset in the new file).
pub(crate) type Moves = Vec<(ChainId, Vec<(RecordKey, Location, u64)>)>;

/// Writes `planned` into `out` (empty), fdatasynced; returns where the payloads went.
pub(crate) fn write(planned: &Planned, out: &Arc<dyn StorageFile>) -> Result<Moves, LogError> {
    let name = "snapshot being built";
    out.write_at(SNAP_MAGIC, 0)
        .map_err(LogError::io("write", name))?;
    let mut offset = SNAP_MAGIC.len() as u64;
    let mut heads = Vec::new();
    let mut moves = Vec::new();
    for c in &planned.chains {
        // Each chain's image is an `ate` snapshot file written in place inside this one.
        let section: Arc<dyn Storage> = Arc::new(Shifted {
            file: out.clone(),
            base: offset,
        });
        let mut w = SnapshotWriter::create(section, c.id, c.head.index, c.root.as_ref())?;
        let mut moved = Vec::new();
        for (key, e) in &c.records {
            let payload = match e.payload {
                Some((loc, len)) => read_payload(&planned.log, &planned.snapshots, loc, len)?,
                None => Vec::new(),
            };
            let at = w.add(&e.to_snapshot(*key, payload.len()), &payload)?;
            if let Some((from, _)) = e.payload {
                moved.push((*key, from, offset + at.offset));
            }
        }
        let len = w.finish()?.len().map_err(LogError::io("stat", name))?;
        heads.push(ChainHead {
            offset,
            len,
            ..c.head.clone()
        });
        moves.push((c.id, moved));
        offset += len;
    }
    let footer = Footer {
        last_applied: planned.meta.last_log_id,
        membership: planned.meta.last_membership.clone(),
        snapshot_id: planned.meta.snapshot_id.clone(),
        chains: heads,
    };
    let more = FooterMore {
        genesis: planned
            .chains
            .iter()
            .filter_map(|c| Some((c.id.0, c.genesis?.0)))
            .collect(),
    };
    let encoding = |e: postcard::Error| LogError::Corrupt {
        file: name.into(),
        offset: 0,
        reason: e.to_string(),
    };
    let mut fb = postcard::to_stdvec(&footer).map_err(encoding)?;
    fb.extend_from_slice(&postcard::to_stdvec(&more).map_err(encoding)?);
    fb.extend_from_slice(&(fb.len() as u32).to_le_bytes());
    fb.extend_from_slice(SNAP_MAGIC);
    out.write_at(&fb, offset)
        .map_err(LogError::io("write", name))?;
    out.sync_data().map_err(LogError::io("fdatasync", name))?;
    Ok(moves)
}

/// The rest of a file from `base` on, as a storage of one file: what a `SnapshotWriter` writes
/// a chain's section through. Renames and syncs are the whole file's, done once at the end.
#[derive(Debug)]
struct Shifted {
    file: Arc<dyn StorageFile>,
    base: u64,
}

impl Storage for Shifted {
    fn list(&self) -> std::io::Result<Vec<String>> {
        Ok(Vec::new())
    }
    fn open(&self, _: &str, _: bool) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(Shifted {
            file: self.file.clone(),
            base: self.base,
        }))
    }
    fn remove(&self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn rename(&self, _: &str, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StorageFile for Shifted {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.len()?.saturating_sub(self.base))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_at(buf, self.base + offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_at(buf, self.base + offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&self, len: u64) -> std::io::Result<()> {
        // The writer empties its new file first: only what lies past the section goes.
        if self.file.len()? > self.base + len {
            self.file.truncate(self.base + len)?;
        }
        Ok(())
    }
}
