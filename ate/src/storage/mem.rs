//! In-memory backend that remembers what was made durable, so a test can take the image a power
//! cut would leave behind.

use super::{Storage, StorageFile};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

#[derive(Debug, Default)]
struct MemFileInner {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct MemFile(Mutex<MemFileInner>);

/// Files in memory. Directory operations are durable at once; file contents only at sync.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    files: Arc<Mutex<BTreeMap<String, Arc<MemFile>>>>,
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new storage holding only what was synced: what a power cut would leave.
    pub fn crash_image(&self) -> MemStorage {
        let files = self
            .files
            .lock()
            .iter()
            .map(|(n, f)| {
                let durable = f.0.lock().durable.clone();
                let file = MemFile(Mutex::new(MemFileInner {
                    data: durable.clone(),
                    durable,
                }));
                (n.clone(), Arc::new(file))
            })
            .collect();
        MemStorage {
            files: Arc::new(Mutex::new(files)),
        }
    }

    /// Current (not necessarily durable) bytes of a file.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        self.files.lock().get(name).map(|f| f.0.lock().data.clone())
    }

    /// Replaces a file's bytes (durably), e.g. to cut or corrupt it in a test.
    pub fn set_contents(&self, name: &str, bytes: Vec<u8>) {
        let f = MemFile(Mutex::new(MemFileInner {
            data: bytes.clone(),
            durable: bytes,
        }));
        self.files.lock().insert(name.to_string(), Arc::new(f));
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files.lock().keys().cloned().collect())
    }
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut files = self.files.lock();
        if let Some(f) = files.get(name) {
            return Ok(f.clone());
        }
        if !create {
            return Err(not_found(name));
        }
        let f = Arc::new(MemFile::default());
        files.insert(name.to_string(), f.clone());
        Ok(f)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .lock()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.files.lock();
        let f = files.remove(from).ok_or_else(|| not_found(from))?;
        files.insert(to.to_string(), f);
        Ok(())
    }
    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
}

impl StorageFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.lock().data.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let g = self.0.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        if end > g.data.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&g.data[start..end]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut g = self.0.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start + buf.len();
        if g.data.len() < end {
            g.data.resize(end, 0);
        }
        g.data[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut g = self.0.lock();
        g.durable = g.data.clone();
        Ok(())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.0.lock().data.resize(len, 0);
        Ok(())
    }
    /// Asks for the disk's layout (from a lower size, so more tests meet it): the logs the
    /// tests replay then hold the padding frames real files get.
    fn write_alignment(&self) -> Option<(usize, usize)> {
        Some((4096, 64 << 10))
    }
}
