//! What the file system stores in a chain, and under which record keys.
//!
//! - inode `ino`: key `H("ino", ino)`, no parent; payload: [`Inode`].
//! - directory entry `name` in directory `dir`: key `H("dirent", dir, name)`, parent the
//!   directory's inode record; payload: [`Dirent`] (the name lives only in the sealed payload).
//! - data block `i` of file `ino`: key `H("block", ino, i)`, parent the file's inode record;
//!   payload: the block's bytes (shorter than a block when its tail is zeros). A missing block
//!   is a hole and reads as zeros.
//!
//! `H` is the keyed BLAKE3 under the volume's name key, so servers learn nothing from keys.
//! Layouts are in docs/format.md §atefs records.

use ate::codec::{DecodeError, Reader, Writer};
use ate::{NameKey, RecordKey};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
const INODE_FORMAT: u8 = 1;
const DIRENT_FORMAT: u8 = 1;
/// Longest name in a directory.
pub const MAX_NAME: usize = 255;

/// Kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Regular file.
    File = 1,
    /// Directory.
    Dir = 2,
    /// Symbolic link.
    Symlink = 3,
    /// Named pipe.
    Fifo = 4,
    /// Unix socket.
    Socket = 5,
    /// Character device.
    CharDev = 6,
    /// Block device.
    BlockDev = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }

    /// From the S_IFMT bits of a mode.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// An inode's attributes (sealed in its record's payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (no type bits).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device number of device nodes.
    pub rdev: u32,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
    /// Creation time.
    pub crtime: SystemTime,
    /// Directories: the parent directory (for ".."); others: 0.
    pub parent: u64,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn put_time(w: &mut Writer, t: SystemTime) {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            // Before 1970: floor to whole seconds below, keep nanoseconds positive.
            let extra = u32::from(d.subsec_nanos() > 0);
            (
                -(d.as_secs() as i64) - i64::from(extra),
                (1_000_000_000 - d.subsec_nanos()) % 1_000_000_000,
            )
        }
    };
    w.u64(secs as u64);
    w.u32(nanos);
}

fn get_time(r: &mut Reader<'_>) -> Result<SystemTime, DecodeError> {
    let secs = r.u64()? as i64;
    let nanos = r.u32()?;
    if nanos >= 1_000_000_000 {
        return Err(DecodeError::Invalid {
            what: "nanoseconds",
            value: nanos.into(),
        });
    }
    Ok(if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
    })
}

impl Inode {
    /// A new inode stamped with the current time.
    pub fn new(ino: u64, kind: Kind, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Self {
            ino,
            kind,
            perm,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: 0,
            target: Vec::new(),
            xattrs: Vec::new(),
        }
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128 + self.target.len());
        w.u8(INODE_FORMAT);
        w.u64(self.ino);
        w.u8(self.kind as u8);
        w.u16(self.perm);
        w.u32(self.uid);
        w.u32(self.gid);
        w.u32(self.nlink);
        w.u64(self.size);
        w.u32(self.rdev);
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            put_time(&mut w, t);
        }
        w.u64(self.parent);
        w.bytes(&self.target);
        w.u32(self.xattrs.len() as u32);
        for (n, v) in &self.xattrs {
            w.bytes(n);
            w.bytes(v);
        }
        w.into_vec()
    }

    /// Decodes a payload.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let f = r.u8()?;
        if f != INODE_FORMAT {
            return Err(DecodeError::Invalid {
                what: "inode format",
                value: f.into(),
            });
        }
        let ino = r.u64()?;
        let k = r.u8()?;
        let kind = Kind::from_u8(k).ok_or(DecodeError::Invalid {
            what: "inode kind",
            value: k.into(),
        })?;
        let perm = r.u16()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let nlink = r.u32()?;
        let size = r.u64()?;
        let rdev = r.u32()?;
        let atime = get_time(&mut r)?;
        let mtime = get_time(&mut r)?;
        let ctime = get_time(&mut r)?;
        let crtime = get_time(&mut r)?;
        let parent = r.u64()?;
        let target = r.bytes("symlink target", 4096)?.to_vec();
        let n = r.count("xattrs", 4096)?;
        let mut xattrs = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = r.bytes("xattr name", 255)?.to_vec();
            let value = r.bytes("xattr value", 64 << 10)?.to_vec();
            xattrs.push((name, value));
        }
        r.finish()?;
        Ok(Self {
            ino,
            kind,
            perm,
            uid,
            gid,
            nlink,
            size,
            rdev,
            atime,
            mtime,
            ctime,
            crtime,
            parent,
            target,
            xattrs,
        })
    }
}

/// A directory entry (sealed in its record's payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    /// The name.
    pub name: Vec<u8>,
    /// The inode it names.
    pub ino: u64,
    /// The inode's kind (for readdir without loading it).
    pub kind: Kind,
}

impl Dirent {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + self.name.len());
        w.u8(DIRENT_FORMAT);
        w.bytes(&self.name);
        w.u64(self.ino);
        w.u8(self.kind as u8);
        w.into_vec()
    }

    /// Decodes a payload.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let f = r.u8()?;
        if f != DIRENT_FORMAT {
            return Err(DecodeError::Invalid {
                what: "dirent format",
                value: f.into(),
            });
        }
        let name = r.bytes("name", MAX_NAME)?.to_vec();
        let ino = r.u64()?;
        let k = r.u8()?;
        let kind = Kind::from_u8(k).ok_or(DecodeError::Invalid {
            what: "dirent kind",
            value: k.into(),
        })?;
        r.finish()?;
        Ok(Self { name, ino, kind })
    }
}

/// Derives the record keys of one volume.
#[derive(Debug, Clone)]
pub struct Keys {
    names: NameKey,
}

impl Keys {
    /// Keys under the volume's name key.
    pub fn new(names: NameKey) -> Self {
        Self { names }
    }
    /// An inode's record.
    pub fn inode(&self, ino: u64) -> RecordKey {
        self.names.record_key(&[b"ino", &ino.to_le_bytes()])
    }
    /// The writer lease record of `--exclusive` mounts.
    pub fn lease(&self) -> RecordKey {
        self.names.record_key(&[b"writer-lease"])
    }
    /// A directory entry's record.
    pub fn dirent(&self, dir: u64, name: &[u8]) -> RecordKey {
        self.names
            .record_key(&[b"dirent", &dir.to_le_bytes(), name])
    }
    /// A data block's record.
    pub fn block(&self, ino: u64, index: u64) -> RecordKey {
        self.names
            .record_key(&[b"block", &ino.to_le_bytes(), &index.to_le_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_roundtrip_including_times_before_1970() {
        let mut i = Inode::new(7, Kind::Symlink, 0o4755, 1000, 100);
        i.atime = UNIX_EPOCH - Duration::new(5, 250);
        i.mtime = UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999);
        i.target = b"/some/where".to_vec();
        i.xattrs = vec![(b"user.a".to_vec(), b"1".to_vec())];
        assert_eq!(Inode::decode(&i.encode()), Ok(i));
    }

    #[test]
    fn dirent_roundtrip_and_truncation() {
        let d = Dirent {
            name: b"hello".to_vec(),
            ino: 42,
            kind: Kind::File,
        };
        let b = d.encode();
        assert_eq!(Dirent::decode(&b), Ok(d));
        for cut in 0..b.len() {
            assert!(Dirent::decode(&b[..cut]).is_err());
        }
    }
}
