//! The appender: opens (and recovers) a log, appends batches of transactions as frames, makes
//! them durable with one fdatasync per batch, rolls segments and retires compacted ones.

use super::files::{FileRef, Files, Location};
use super::frame::{
    encode_frame, encode_pad, frame_header, FrameKind, FRAME_HEADER, MAX_PAD_ALIGN,
};
use super::recovery::{is_torn_tail, scan_frame, Recovered, RecoveryVisitor, Scanned};
use super::segment::{parse_name, FileHeader, FILE_FORMAT, FILE_HEADER, SEGMENT_MAGIC};
use super::snapshot::read_snapshot;
use super::LogError;
use crate::ids::ChainId;
use crate::storage::{Storage, StorageFile};
use std::sync::Arc;

/// Transactions this large are written from where they lie, not copied behind their frame
/// header into the append buffer.
const WRITE_IN_PLACE: usize = 64 << 10;

/// Tuning of the log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// A new segment starts once the current one exceeds this many bytes.
    pub segment_bytes: u64,
    /// The log is a copy of a chain held durably elsewhere (a mount's cache of a cluster's
    /// chain): it never fdatasyncs (not its appends, not its rolls), and on open it is cut at
    /// its first defect, wherever it lies, where a durable log refuses to open. What a crash
    /// cost it is fetched again.
    pub disposable: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            disposable: false,
        }
    }
}

/// The single appender of a chain's log.
#[derive(Debug)]
pub struct RedoLog {
    files: Arc<Files>,
    chain: ChainId,
    tail: Arc<dyn StorageFile>,
    tail_first: u64,
    tail_len: u64,
    /// The tail segment's format: padding is written only into format 2.
    tail_format: u16,
    next_index: u64,
    opts: LogOptions,
    poisoned: bool,
    buf: Vec<u8>,
}

impl RedoLog {
    /// Opens the log in `storage`, replaying it into `visitor`. With `create`, an empty storage
    /// gets a new chain of that id; without, an empty storage is an error.
    pub fn open(
        storage: Arc<dyn Storage>,
        create: Option<ChainId>,
        opts: LogOptions,
        visitor: &mut dyn RecoveryVisitor,
    ) -> Result<(Self, Recovered), LogError> {
        let files = Arc::new(Files::new(storage.clone()));
        let mut report = Recovered::default();
        let names = storage.list().map_err(LogError::io("list", "."))?;
        let mut segments = Vec::new();
        let mut snapshots = Vec::new();
        for name in &names {
            if name.ends_with(".tmp") {
                // An interrupted snapshot: never renamed, so never in use.
                storage.remove(name).map_err(LogError::io("remove", name))?;
                continue;
            }
            match parse_name(name) {
                Some((true, i)) => segments.push(i),
                Some((false, i)) => snapshots.push(i),
                None => {}
            }
        }
        segments.sort_unstable();
        snapshots.sort_unstable();
        let total: u64 = names
            .iter()
            .filter_map(|n| storage.open(n, false).ok()?.len().ok())
            .sum();
        let mut done = 0u64;

        let mut chain = None;
        let mut tail_format = FILE_FORMAT;
        let mut next_index = 1u64;
        if let Some(&snap) = snapshots.last() {
            let f = storage
                .open(&FileRef::Snapshot(snap).name(), false)
                .map_err(LogError::io("open", FileRef::Snapshot(snap).name()))?;
            chain = Some(read_snapshot(f.as_ref(), snap, visitor)?);
            done += f.len().unwrap_or(0);
            visitor.progress(done, total);
            files.insert(FileRef::Snapshot(snap), f);
            report.snapshot = Some(snap);
            next_index = snap + 1;
            for old in &snapshots[..snapshots.len() - 1] {
                let n = FileRef::Snapshot(*old).name();
                storage.remove(&n).map_err(LogError::io("remove", &n))?;
            }
        }
        // Segments entirely below the snapshot are leftovers of an interrupted compaction.
        let keep_from = segments
            .iter()
            .rposition(|&first| first <= next_index)
            .unwrap_or(0);
        for &first in &segments[..keep_from] {
            let n = FileRef::Segment(first).name();
            storage.remove(&n).map_err(LogError::io("remove", &n))?;
        }
        let segments = &segments[keep_from..];

        // The first defect met in a disposable log.
        let mut cut = None;
        for (i, &first) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let name = FileRef::Segment(first).name();
            let file = storage
                .open(&name, false)
                .map_err(LogError::io("open", &name))?;
            let len = file.len().map_err(LogError::io("stat", &name))?;
            if len < FILE_HEADER as u64 && last {
                // Created but its header never made it to disk: it holds nothing.
                storage
                    .remove(&name)
                    .map_err(LogError::io("remove", &name))?;
                report.truncated_bytes += len;
                continue;
            }
            let mut index = first;
            let mut seg_format = FILE_FORMAT;
            // Where this segment stops being sound, and why.
            let defect: Option<(u64, String)> = 'scan: {
                let mut hb = [0u8; FILE_HEADER];
                if file.read_at(&mut hb, 0).is_err() {
                    break 'scan Some((0, "shorter than its header".into()));
                }
                let fh = match FileHeader::decode_with_format(&hb) {
                    Ok((fh, format)) => {
                        seg_format = format;
                        fh
                    }
                    Err(e) => break 'scan Some((0, e.to_string())),
                };
                if fh.magic != SEGMENT_MAGIC || fh.index != first {
                    break 'scan Some((0, "header does not match the file name".into()));
                }
                if *chain.get_or_insert(fh.chain) != fh.chain {
                    // Not what a crash leaves: another chain's files are here.
                    return Err(LogError::Corrupt {
                        file: name,
                        offset: 0,
                        reason: format!("belongs to chain {}", fh.chain),
                    });
                }
                if first > next_index {
                    break 'scan Some((
                        0,
                        format!(
                            "starts at index {first}, expected {next_index}: a segment is missing"
                        ),
                    ));
                }
                let mut off = FILE_HEADER as u64;
                loop {
                    match scan_frame(file.as_ref(), &name, off, len)? {
                        Scanned::End => break 'scan None,
                        Scanned::Frame {
                            kind: FrameKind::Pad,
                            next,
                            ..
                        } => {
                            done += next - off;
                            off = next;
                        }
                        Scanned::Frame {
                            kind,
                            payload,
                            next,
                        } => {
                            if kind != FrameKind::Tx || payload.len() < 8 {
                                break 'scan Some((
                                    off,
                                    format!("unexpected {kind:?} frame in a segment"),
                                ));
                            }
                            let mut ib = [0u8; 8];
                            ib.copy_from_slice(&payload[..8]);
                            let got = u64::from_le_bytes(ib);
                            if got != index {
                                break 'scan Some((
                                    off,
                                    format!("entry has index {got}, expected {index}"),
                                ));
                            }
                            if index >= next_index {
                                let at = Location {
                                    file: FileRef::Segment(first),
                                    offset: off + (FRAME_HEADER + 8) as u64,
                                };
                                visitor.entry(index, &payload[8..], at)?;
                                report.entries += 1;
                                next_index = index + 1;
                            }
                            index += 1;
                            done += next - off;
                            off = next;
                            if report.entries % 4096 == 0 {
                                visitor.progress(done, total);
                            }
                        }
                        Scanned::Bad { reason } => {
                            if opts.disposable
                                || !last
                                || !is_torn_tail(file.as_ref(), &name, off, len)?
                            {
                                break 'scan Some((off, reason));
                            }
                            tracing::warn!(file = %name, offset = off, bytes = len - off, %reason, "truncating torn tail");
                            file.truncate(off)
                                .map_err(LogError::io("truncate", &name))?;
                            file.sync_data().map_err(LogError::io("fdatasync", &name))?;
                            report.truncated_bytes += len - off;
                            break 'scan None;
                        }
                    }
                }
            };
            if let Some((offset, reason)) = defect {
                if !opts.disposable {
                    return Err(LogError::Corrupt {
                        file: name,
                        offset,
                        reason,
                    });
                }
                cut = Some(Defect {
                    segment: i,
                    file,
                    len,
                    offset,
                    index,
                    format: seg_format,
                    reason,
                });
                break;
            }
            tail_format = seg_format;
            files.insert(FileRef::Segment(first), file);
        }
        visitor.progress(total, total);

        let chain = match (chain, create) {
            (Some(c), Some(want)) if c != want => {
                return Err(LogError::WrongChain(format!(
                    "storage holds chain {c}, not {want}"
                )))
            }
            (Some(c), _) => c,
            (None, Some(want)) => want,
            (None, None) => return Err(LogError::WrongChain("no chain in this storage".into())),
        };
        if let Some(defect) = cut {
            if let Some(format) =
                cut_at(&storage, &files, segments, defect, next_index, &mut report)?
            {
                tail_format = format;
            }
        }
        let mut log = RedoLog {
            files,
            chain,
            tail: Arc::new(NoFile),
            tail_first: 0,
            tail_len: 0,
            tail_format: FILE_FORMAT,
            next_index,
            opts,
            poisoned: false,
            buf: Vec::new(),
        };
        match log.files.segments().last() {
            Some(&first) => {
                log.tail = log
                    .files
                    .get(&FileRef::Segment(first))
                    .ok_or(LogError::Poisoned)?;
                log.tail_first = first;
                log.tail_format = tail_format;
                log.tail_len = log
                    .tail
                    .len()
                    .map_err(LogError::io("stat", FileRef::Segment(first).name()))?;
            }
            None => log.roll()?,
        }
        report.next_index = next_index;
        Ok((log, report))
    }

    /// The chain.
    pub fn chain(&self) -> ChainId {
        self.chain
    }

    /// Files, for readers.
    pub fn files(&self) -> &Arc<Files> {
        &self.files
    }

    /// Index the next appended transaction gets.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Starts a new segment at the next index.
    pub fn roll(&mut self) -> Result<(), LogError> {
        let first = self.next_index;
        let name = FileRef::Segment(first).name();
        let storage = &self.files.storage;
        let file = storage
            .open(&name, true)
            .map_err(LogError::io("create", &name))?;
        let header = FileHeader {
            magic: SEGMENT_MAGIC,
            index: first,
            chain: self.chain,
        }
        .encode();
        file.truncate(0).map_err(LogError::io("truncate", &name))?;
        file.write_at(&header, 0)
            .map_err(LogError::io("write", &name))?;
        if !self.opts.disposable {
            file.sync_data().map_err(LogError::io("fdatasync", &name))?;
            storage.sync_dir().map_err(LogError::io("fsync", "."))?;
        }
        self.files.insert(FileRef::Segment(first), file.clone());
        self.tail = file;
        self.tail_first = first;
        self.tail_len = FILE_HEADER as u64;
        self.tail_format = FILE_FORMAT;
        Ok(())
    }

    /// Appends transactions (not yet durable: call [`Self::sync`]). Returns each one's index and
    /// the location of its bytes. On a write error the tail is cut back, so the log is as before.
    pub fn append(&mut self, txs: &[&[u8]]) -> Result<Vec<(u64, Location)>, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if self.tail_len >= self.opts.segment_bytes {
            self.roll().inspect_err(|_| self.poisoned = true)?;
        }
        self.buf.clear();
        let mut out = Vec::with_capacity(txs.len());
        // Bytes of this append already written (large transactions go from where they lie).
        let mut written = 0u64;
        let align = self
            .tail
            .write_alignment()
            .filter(|(a, _)| self.tail_format >= FILE_FORMAT && *a <= MAX_PAD_ALIGN);
        for (i, tx) in txs.iter().enumerate() {
            let index = self.next_index + i as u64;
            let at = self.tail_len + written;
            if let Some((align, _)) = align.filter(|(_, min)| tx.len() >= *min) {
                // Moves the transaction to the file offset that matches its memory address, so
                // the file writes it from where it lies (copying it to aligned memory was a
                // tenth of a mount's CPU in a sequential write, perf).
                let lands = at + (self.buf.len() + FRAME_HEADER + 8) as u64;
                encode_pad(lands, tx.as_ptr() as usize, align, &mut self.buf);
            }
            let offset = at + (self.buf.len() + FRAME_HEADER + 8) as u64;
            let index_bytes = index.to_le_bytes();
            if tx.len() >= WRITE_IN_PLACE {
                // Copying an 8 MiB transaction behind its header was a tenth of an embedded
                // mount's CPU in a sequential write (perf).
                self.buf
                    .extend_from_slice(&frame_header(FrameKind::Tx, &[&index_bytes, tx]));
                self.buf.extend_from_slice(&index_bytes);
                let r = self
                    .tail
                    .write_at(&self.buf, at)
                    .and_then(|()| self.tail.write_at(tx, at + self.buf.len() as u64));
                if let Err(e) = r {
                    return Err(self.failed_write(e));
                }
                written += (self.buf.len() + tx.len()) as u64;
                self.buf.clear();
            } else {
                encode_frame(FrameKind::Tx, &[&index_bytes, tx], &mut self.buf);
            }
            out.push((
                index,
                Location {
                    file: FileRef::Segment(self.tail_first),
                    offset,
                },
            ));
        }
        if !self.buf.is_empty() {
            if let Err(e) = self.tail.write_at(&self.buf, self.tail_len + written) {
                return Err(self.failed_write(e));
            }
        }
        self.tail_len += written + self.buf.len() as u64;
        self.next_index += txs.len() as u64;
        if self.buf.capacity() > 16 << 20 {
            self.buf = Vec::new();
        }
        Ok(out)
    }

    /// Undoes a partly written append (or poisons the log when even that fails).
    fn failed_write(&mut self, source: std::io::Error) -> LogError {
        let name = FileRef::Segment(self.tail_first).name();
        if self.tail.truncate(self.tail_len).is_err() {
            self.poisoned = true;
        }
        LogError::Io {
            op: "write",
            file: name,
            source,
        }
    }

    /// Makes everything appended durable. A failure poisons the log: after a failed fsync the
    /// kernel may have dropped the dirty pages, so nothing more may be acknowledged.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if self.opts.disposable {
            return Ok(());
        }
        self.tail.sync_data().map_err(|e| {
            self.poisoned = true;
            LogError::Io {
                op: "fdatasync",
                file: FileRef::Segment(self.tail_first).name(),
                source: e,
            }
        })
    }

    /// What [`Self::sync`] would sync: the current tail, so that another thread can fdatasync
    /// a batch while the next one is appended. Report a failure with [`Self::poison`].
    /// A disposable log ([`LogOptions::disposable`]) is never synced.
    pub fn sync_handle(&self) -> (Arc<dyn StorageFile>, String) {
        (self.tail.clone(), FileRef::Segment(self.tail_first).name())
    }

    /// Marks the log unusable (after a failed fsync done through a sync handle).
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// True after a failure that needs a reopen.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Makes `snapshot` (indexes up to `last`, past this log's end) the whole log: every
    /// segment and an older snapshot go, and the next append gets `last + 1`. For a cache
    /// taking its upstream's image of the chain ([`crate::Chain::install_image`]).
    pub fn restart_at(
        &mut self,
        snapshot: Arc<dyn StorageFile>,
        last: u64,
    ) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if last < self.next_index {
            return Err(LogError::NotAhead {
                image: last,
                next: self.next_index,
            });
        }
        self.next_index = last + 1;
        // The new tail first: every older segment then lies below it and is retired.
        self.roll().inspect_err(|_| self.poisoned = true)?;
        self.retire_upto(snapshot, last)
    }

    /// After a snapshot at `last` was installed: drops older snapshots and every segment whose
    /// entries are all covered. The caller rolled first, so the tail is never dropped.
    pub fn retire_upto(
        &mut self,
        snapshot: Arc<dyn StorageFile>,
        last: u64,
    ) -> Result<(), LogError> {
        let storage = self.files.storage.clone();
        if let Some(old) = self.files.snapshot() {
            if old != last {
                self.files.remove(&FileRef::Snapshot(old));
                let n = FileRef::Snapshot(old).name();
                storage.remove(&n).map_err(LogError::io("remove", &n))?;
            }
        }
        self.files.insert(FileRef::Snapshot(last), snapshot);
        for first in self.files.segments() {
            if first < self.tail_first && first <= last {
                self.files.remove(&FileRef::Segment(first));
                let n = FileRef::Segment(first).name();
                storage.remove(&n).map_err(LogError::io("remove", &n))?;
            }
        }
        storage.sync_dir().map_err(LogError::io("fsync", "."))
    }
}

/// Where a disposable log's first defect lies.
struct Defect {
    /// Position in the list of segments.
    segment: usize,
    /// The segment, as opened for the scan, and its length.
    file: Arc<dyn StorageFile>,
    len: u64,
    offset: u64,
    /// Index the entry there should have had.
    index: u64,
    /// The segment's format.
    format: u16,
    reason: String,
}

/// Cuts a disposable log at its first defect. Its appends and rolls are not synced, so after
/// a crash any of its segments may have lost its end; whatever followed the defect is fetched
/// again from where the chain is held. Returns the format of the segment cut, if kept.
fn cut_at(
    storage: &Arc<dyn Storage>,
    files: &Files,
    segments: &[u64],
    defect: Defect,
    next_index: u64,
    report: &mut Recovered,
) -> Result<Option<u16>, LogError> {
    let Defect {
        segment,
        file,
        len,
        offset,
        index,
        format,
        reason,
    } = defect;
    let name = FileRef::Segment(segments[segment]).name();
    tracing::warn!(file = %name, offset, next_index, %reason, "cutting a disposable log at its first defect");
    // Kept only if what it holds before the defect ends where the log now ends.
    let kept = offset >= FILE_HEADER as u64 && index == next_index;
    if kept {
        file.truncate(offset)
            .map_err(LogError::io("truncate", &name))?;
        report.truncated_bytes += len - offset;
        files.insert(FileRef::Segment(segments[segment]), file);
    } else {
        storage
            .remove(&name)
            .map_err(LogError::io("remove", &name))?;
        report.truncated_bytes += len;
    }
    for &later in &segments[segment + 1..] {
        let n = FileRef::Segment(later).name();
        report.truncated_bytes += storage.open(&n, false).and_then(|f| f.len()).unwrap_or(0);
        storage.remove(&n).map_err(LogError::io("remove", &n))?;
    }
    Ok(kept.then_some(format))
}

/// Placeholder tail before the first segment exists (never written to).
#[derive(Debug)]
struct NoFile;

impl StorageFile for NoFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(0)
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn truncate(&self, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{LogCursor, SnapshotRecord};
    use super::*;
    use crate::authority::RootAuthority;
    use crate::storage::MemStorage;

    #[derive(Default)]
    struct Entries(Vec<(u64, Vec<u8>, Location)>);

    impl RecoveryVisitor for Entries {
        fn snapshot_root(&mut self, _: Option<RootAuthority>, _: u64) {}
        fn snapshot_record(
            &mut self,
            _: SnapshotRecord,
            _: Option<Location>,
        ) -> Result<(), LogError> {
            Ok(())
        }
        fn entry(&mut self, index: u64, tx: &[u8], at: Location) -> Result<(), LogError> {
            self.0.push((index, tx.to_vec(), at));
            Ok(())
        }
    }

    /// `len` bytes of `fill` whose address is `phase` past a 4096 boundary.
    fn at_phase(backing: &mut Vec<u8>, phase: usize, len: usize, fill: u8) -> &[u8] {
        *backing = vec![fill; len + 8192];
        let skip = (backing.as_ptr().align_offset(4096) + phase) % 4096;
        &backing[skip..skip + len]
    }

    fn open_log(storage: &Arc<dyn Storage>, chain: ChainId) -> RedoLog {
        RedoLog::open(
            storage.clone(),
            Some(chain),
            LogOptions::default(),
            &mut Entries::default(),
        )
        .expect("opens")
        .0
    }

    fn segment_format(mem: &MemStorage) -> u16 {
        let f = mem
            .open(&FileRef::Segment(1).name(), false)
            .expect("segment");
        let mut hb = [0u8; FILE_HEADER];
        f.read_at(&mut hb, 0).expect("header");
        FileHeader::decode_with_format(&hb).expect("decodes").1
    }

    #[test]
    fn large_transactions_lie_in_the_file_as_in_memory_and_replay_past_the_padding() {
        let mem = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(mem.clone());
        let chain = ChainId::random();
        let mut log = open_log(&storage, chain);
        assert_eq!(segment_format(&mem), FILE_FORMAT);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let big_a = at_phase(&mut a, 100, 200 << 10, 7);
        let big = big_a.to_vec();
        let big_b = at_phase(&mut b, 4090, 100 << 10, 9);
        let small = b"small".to_vec();
        let mut want = Vec::new();
        for txs in [vec![&small[..], big_a], vec![big_b], vec![&small[..]]] {
            for (i, loc) in log.append(&txs).expect("appends") {
                let tx = txs[(i + txs.len() as u64 - log.next_index()) as usize];
                if tx.len() >= 64 << 10 {
                    assert_eq!(loc.offset % 4096, tx.as_ptr() as u64 % 4096, "tx {i}");
                }
                want.push((i, tx.to_vec(), loc));
            }
            log.sync().expect("syncs");
        }
        assert_eq!(want[1].1, big);
        drop(log);
        let mut got = Entries::default();
        let (log, rec) =
            RedoLog::open(storage, Some(chain), LogOptions::default(), &mut got).expect("reopens");
        assert_eq!(got.0, want);
        assert_eq!(rec.truncated_bytes, 0);
        let mut cursor = LogCursor::new(log.files().clone(), 1).expect("cursor");
        for (i, tx, _) in &want {
            assert_eq!(
                cursor.read_next(u64::MAX).expect("reads"),
                Some((*i, tx.clone()))
            );
        }
        assert_eq!(cursor.read_next(u64::MAX).expect("reads"), None);
    }

    #[test]
    fn a_format_1_segment_is_continued_without_padding() {
        let mem = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(mem.clone());
        let chain = ChainId::random();
        drop(open_log(&storage, chain));
        // Rewrite the header as format 1, as a format-1 writer left it.
        let f = mem
            .open(&FileRef::Segment(1).name(), false)
            .expect("segment");
        let mut hb = [0u8; FILE_HEADER];
        f.read_at(&mut hb, 0).expect("header");
        hb[8..10].copy_from_slice(&super::super::segment::FILE_FORMAT_1.to_le_bytes());
        let crc = crc32c::crc32c(&hb[..36]);
        hb[36..].copy_from_slice(&crc.to_le_bytes());
        f.write_at(&hb, 0).expect("rewrites");
        let mut log = open_log(&storage, chain);
        let mut a = Vec::new();
        let big = at_phase(&mut a, 100, 200 << 10, 7);
        let locs = log.append(&[big]).expect("appends");
        // Right behind the header and its frame header: no padding frame.
        assert_eq!(locs[0].1.offset, (FILE_HEADER + FRAME_HEADER + 8) as u64);
        log.sync().expect("syncs");
        assert_eq!(segment_format(&mem), super::super::segment::FILE_FORMAT_1);
        drop(log);
        let mut got = Entries::default();
        RedoLog::open(storage, Some(chain), LogOptions::default(), &mut got).expect("reopens");
        assert_eq!(got.0.len(), 1);
        assert_eq!(got.0[0].1, big);
    }
}
