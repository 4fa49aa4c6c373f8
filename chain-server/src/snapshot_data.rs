//! A partition's snapshot as openraft reads and writes it: a file, read and written in the
//! chunks openraft sends (3 MiB), never the whole in memory. A leader sends a follower the
//! current snapshot file through it; a follower receives into a temporary file through it and
//! installs that file. The file's I/O runs on tokio's blocking threads, one chunk at a time.

use ate::storage::{MemStorage, Storage, StorageFile};
use std::future::Future;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// A snapshot file and a position in it.
pub struct SnapshotData {
    file: Arc<dyn StorageFile>,
    pos: u64,
    op: Option<Op>,
}

/// A read or write of the file in flight.
enum Op {
    /// Reading `len` bytes at `at`.
    Read {
        at: u64,
        len: usize,
        task: JoinHandle<io::Result<Vec<u8>>>,
    },
    /// Writing `len` bytes at `at`.
    Write {
        at: u64,
        len: usize,
        task: JoinHandle<io::Result<()>>,
    },
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotData")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl SnapshotData {
    /// Reads (and writes) `file` from its start.
    pub fn new(file: Arc<dyn StorageFile>) -> Self {
        Self {
            file,
            pos: 0,
            op: None,
        }
    }

    /// Nothing (for a snapshot whose data openraft will not read).
    pub fn empty() -> io::Result<Self> {
        Ok(Self::new(MemStorage::new().open("empty", true)?))
    }

    /// The file.
    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }
}

fn joined<T>(r: Result<io::Result<T>, tokio::task::JoinError>) -> io::Result<T> {
    r.map_err(io::Error::other)?
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining();
        // A read dropped half way (or for another buffer) is not this one.
        if !matches!(this.op, Some(Op::Read { at, len, .. }) if at == this.pos && len == want) {
            this.op = None;
        }
        if this.op.is_none() {
            let (file, at) = (this.file.clone(), this.pos);
            let task = tokio::task::spawn_blocking(move || {
                let left = file.len()?.saturating_sub(at);
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(want);
                let mut data = vec![0u8; n];
                file.read_at(&mut data, at)?;
                Ok(data)
            });
            this.op = Some(Op::Read {
                at,
                len: want,
                task,
            });
        }
        let Some(Op::Read { task, .. }) = this.op.as_mut() else {
            return Poll::Ready(Err(io::Error::other("no read in flight")));
        };
        let done = joined(ready!(Pin::new(task).poll(cx)));
        this.op = None;
        let data = done?;
        buf.put_slice(&data);
        this.pos += data.len() as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !matches!(this.op, Some(Op::Write { at, len, .. }) if at == this.pos && len == buf.len())
        {
            this.op = None;
        }
        if this.op.is_none() {
            let (file, at, data) = (this.file.clone(), this.pos, buf.to_vec());
            let task = tokio::task::spawn_blocking(move || file.write_at(&data, at));
            this.op = Some(Op::Write {
                at,
                len: buf.len(),
                task,
            });
        }
        let Some(Op::Write { task, len, .. }) = this.op.as_mut() else {
            return Poll::Ready(Err(io::Error::other("no write in flight")));
        };
        let len = *len;
        let done = joined(ready!(Pin::new(task).poll(cx)));
        this.op = None;
        done?;
        this.pos += len as u64;
        Poll::Ready(Ok(len))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is made durable when the snapshot is installed.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "a seek before the start");
        this.pos = match to {
            SeekFrom::Start(at) => at,
            SeekFrom::End(d) => this.file.len()?.checked_add_signed(d).ok_or_else(invalid)?,
            SeekFrom::Current(d) => this.pos.checked_add_signed(d).ok_or_else(invalid)?,
        };
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn chunks_written_at_offsets_read_back_as_written() {
        let storage = MemStorage::new();
        let file = storage.open("s", true).unwrap();
        let mut data = SnapshotData::new(file.clone());
        data.seek(SeekFrom::Start(3)).await.unwrap();
        data.write_all(b"defgh").await.unwrap();
        data.seek(SeekFrom::Start(0)).await.unwrap();
        data.write_all(b"abc").await.unwrap();
        data.shutdown().await.unwrap();

        let mut sent = SnapshotData::new(file);
        assert_eq!(sent.seek(SeekFrom::End(0)).await.unwrap(), 8);
        sent.seek(SeekFrom::Start(2)).await.unwrap();
        let mut buf = Vec::with_capacity(4);
        sent.read_buf(&mut buf).await.unwrap();
        assert_eq!(buf, b"cdef");
        let mut rest = Vec::new();
        sent.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"gh");
        assert!(sent.seek(SeekFrom::Current(-20)).await.is_err());
        let mut empty = SnapshotData::empty().unwrap();
        assert_eq!(empty.seek(SeekFrom::End(0)).await.unwrap(), 0);
    }
}
