//! The fuser adapter: turns kernel requests into calls on [`AteFs`] and maps errors to errnos
//! (through [`FsError::errno`]). No file-system logic lives here.

use crate::error::FsError;
use crate::fs::{Allocate, AteFs, Caller, RenameMode, Seek, SetAttr};
use crate::gate::Gate;
use crate::handover::KernelInit;
use crate::records::{Inode, Kind};
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the kernel may cache attributes and entries. One mount owns its chain in embedded
/// mode, so nothing changes behind the kernel's back; every change goes through this process,
/// which replies with the new attributes.
const TTL: Duration = Duration::from_secs(3600);

type Listing = Arc<Vec<(u64, Kind, Vec<u8>)>>;

/// The FUSE side of a mount.
#[derive(Debug)]
pub struct FuseFs {
    fs: Arc<AteFs>,
    /// How long the kernel may cache: [`TTL`] for an embedded volume; nothing for a shared
    /// (remote) one, whose other writers the kernel cannot hear about.
    ttl: Duration,
    /// Open flags for files and directories (keep the page cache only when nobody else
    /// writes).
    keep: FopenFlags,
    /// Directory listings by open directory handle: the kernel reads a listing in many small
    /// calls, each of which would otherwise rebuild it.
    listings: parking_lot::Mutex<std::collections::HashMap<u64, Listing>>,
    /// fsync gathering (gather.rs), with the writeback cache only.
    gather: Option<crate::gather::Gather>,
    /// What a handover (handover.rs) needs of this side; also held by the thread that serves
    /// handovers, since the session owns this value.
    handover: Handover,
}

/// The parts of a [`FuseFs`] a handover works with.
#[derive(Clone, Debug, Default)]
pub struct Handover {
    /// Every request passes it.
    pub gate: Arc<Gate>,
    /// What the kernel offered at `FUSE_INIT` (recorded then, or given by the daemon this one
    /// took over from).
    pub init: Arc<parking_lot::Mutex<Option<KernelInit>>>,
    /// The next directory handle.
    pub next_dir_fh: Arc<AtomicU64>,
}

impl FuseFs {
    /// Wraps a file system.
    pub fn new(fs: Arc<AteFs>) -> Self {
        let remote = fs.options().remote;
        Self {
            ttl: if remote { Duration::ZERO } else { TTL },
            keep: if remote {
                FopenFlags::empty()
            } else {
                FopenFlags::FOPEN_KEEP_CACHE
            },
            fs,
            listings: Default::default(),
            gather: None,
            handover: Handover {
                next_dir_fh: Arc::new(AtomicU64::new(1)),
                ..Handover::default()
            },
        }
    }

    /// What a handover of this mount works with.
    pub fn handover(&self) -> Handover {
        self.handover.clone()
    }

    /// Takes the place of a daemon that handed its mount over: directory handles go on from
    /// where it left them and the first `FUSE_INIT` is remembered for the next handover.
    pub fn resuming(self, init: KernelInit, next_dir_fh: u64) -> Self {
        *self.handover.init.lock() = Some(init);
        self.handover
            .next_dir_fh
            .store(next_dir_fh.max(1), std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Gathers fsyncs (gather.rs) with `helper`, a command running [`crate::gather::serve`]
    /// for this mount; only where the kernel keeps a writeback cache (embedded volumes), since
    /// without it writes reach the daemon at once.
    pub fn gather_fsyncs(mut self, helper: std::process::Command) -> Self {
        if !self.fs.options().remote {
            match crate::gather::Gather::start(helper) {
                Ok(g) => self.gather = Some(g),
                Err(e) => tracing::warn!(error = %e, "no fsync gathering thread"),
            }
        }
        self
    }

    /// The listing of an open directory; read afresh at offset 0 (rewinddir sees changes).
    fn listing(&self, ino: u64, fh: u64, offset: u64) -> Result<Listing, FsError> {
        if offset > 0 {
            if let Some(l) = self.listings.lock().get(&fh) {
                return Ok(l.clone());
            }
        }
        let l: Listing = Arc::new(self.fs.readdir(ino)?);
        self.listings.lock().insert(fh, l.clone());
        Ok(l)
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn attr(i: &Inode, bs: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(i.ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime,
        mtime: i.mtime,
        ctime: i.ctime,
        crtime: i.crtime,
        kind: kind(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: bs,
        flags: 0,
    }
}

fn errno(e: &FsError) -> Errno {
    if matches!(e, FsError::Chain(_) | FsError::Corrupt(..)) {
        tracing::error!(error = %e, "I/O error");
    } else {
        tracing::debug!(error = %e, "operation failed");
    }
    Errno::from_i32(e.errno())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        umask: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl FuseFs {
    fn entry(&self, r: Result<Inode, FsError>, reply: ReplyEntry) {
        match r {
            Ok(i) => reply.entry(&self.ttl, &attr(&i, self.bs()), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }
    fn empty(r: Result<(), FsError>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
    fn data(r: Result<Vec<u8>, FsError>, reply: ReplyData) {
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }
    fn bs(&self) -> u32 {
        self.fs.block_size() as u32
    }
}

thread_local! {
    /// Each FUSE worker's read buffer, kept between reads: a fresh one per read cost its
    /// zeroing and page faults, 13 % of the daemon's time in sequential reads (perf), and
    /// the reply's assembly from per-block copies another 10 %. About twice max_read per
    /// worker: direct reads of the log land to the right of the reply (Chain::read_blocks_into).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // What the kernel offered, for a daemon taking this mount over (handover.rs), which
        // must answer the same. The kernel's readahead bound is only told by refusing more.
        let max_readahead = config.set_max_readahead(u32::MAX).err().unwrap_or(u32::MAX);
        let abi = config.kernel_abi();
        self.handover.init.lock().get_or_insert(KernelInit {
            major: abi.0,
            minor: abi.1,
            capabilities: config.capabilities().bits(),
            max_readahead,
        });
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Writeback cache: measured without it, 4 KiB random writes fell from ~16k to ~4.6k
        // IOPS (docs/benchmarks.md); fsync-heavy small files gain without it (2.1k vs 1.4k/s).
        // Not for a shared volume: the kernel would then own sizes and times of files others
        // also write.
        if !self.fs.options().remote {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // The kernel enforces and caches POSIX ACLs (stored as system.posix_acl_* xattrs);
        // without this every `ls -l` asks for each file's ACL.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        // The umask arrives separately and is applied by the core, which must ignore it under
        // a default ACL (acl.rs); without this the kernel would already have applied it.
        let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        // The daemon drops setuid/setgid itself (on writes flagged FUSE_WRITE_KILL_SUIDGID,
        // on a truncate by a non-root caller, on chown). Without this the kernel asked for
        // security.capability (a getxattr round trip) on every write to a file: a third of
        // the requests of 4 KiB random writes.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.flush_all() {
            tracing::error!(error = %e, "could not commit buffered data at unmount");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _in = self.handover.gate.enter();
        self.entry(self.fs.lookup(parent.0, name.as_bytes()), reply)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _in = self.handover.gate.enter();
        match self.fs.getattr(ino.0) {
            Ok(i) => reply.attr(&self.ttl, &attr(&i, self.bs())),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _in = self.handover.gate.enter();
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            ctime,
            // fuser does not pass FATTR_KILL_SUIDGID on: the kernel sets it for a truncate
            // by a caller without CAP_FSETID, which for us is a caller other than root.
            kill_suidgid: size.is_some() && req.uid() != 0,
        };
        match self.fs.setattr(ino.0, &s) {
            Ok(i) => reply.attr(&self.ttl, &attr(&i, self.bs())),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _in = self.handover.gate.enter();
        Self::data(self.fs.readlink(ino.0), reply)
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _in = self.handover.gate.enter();
        let Some(k) = Kind::from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let r = self.fs.mknod(
            parent.0,
            name.as_bytes(),
            k,
            mode,
            rdev,
            b"",
            Caller {
                umask,
                ..caller(req)
            },
        );
        self.entry(r, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _in = self.handover.gate.enter();
        let r = self.fs.mknod(
            parent.0,
            name.as_bytes(),
            Kind::Dir,
            mode,
            0,
            b"",
            Caller {
                umask,
                ..caller(req)
            },
        );
        self.entry(r, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _in = self.handover.gate.enter();
        Self::empty(self.fs.unlink(parent.0, name.as_bytes()), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _in = self.handover.gate.enter();
        Self::empty(self.fs.rmdir(parent.0, name.as_bytes()), reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _in = self.handover.gate.enter();
        let r = self.fs.mknod(
            parent.0,
            link_name.as_bytes(),
            Kind::Symlink,
            0o777,
            0,
            target.as_os_str().as_bytes(),
            caller(req),
        );
        self.entry(r, reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _in = self.handover.gate.enter();
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        Self::empty(
            self.fs.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                mode,
            ),
            reply,
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _in = self.handover.gate.enter();
        self.entry(self.fs.link(ino.0, newparent.0, newname.as_bytes()), reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _in = self.handover.gate.enter();
        match self.fs.open(ino.0, flags.0 & libc::O_TRUNC != 0) {
            Ok(fh) => reply.opened(FileHandle(fh), self.keep),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _in = self.handover.gate.enter();
        READ_BUF.with_borrow_mut(
            |buf| match self.fs.read_into(ino.0, offset, size as usize, buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(errno(&e)),
            },
        )
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _in = self.handover.gate.enter();
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.fs.kill_suidgid(ino.0) {
                return reply.error(errno(&e));
            }
        }
        match self.fs.write(ino.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _in = self.handover.gate.enter();
        // close() starts the commit; fsync() waits for it (docs/semantics.md, durability).
        Self::empty(self.fs.flush_async(ino.0), reply)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.handover.gate.enter();
        Self::empty(self.fs.release(fh.0), reply)
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.handover.gate.enter();
        if let Some(g) = &self.gather {
            g.kick();
        }
        Self::empty(self.fs.fsync(ino.0), reply)
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _in = self.handover.gate.enter();
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let how = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => Allocate::Reserve { keep_size },
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => Allocate::PunchHole,
            libc::FALLOC_FL_ZERO_RANGE => Allocate::ZeroRange { keep_size },
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        Self::empty(self.fs.fallocate(ino.0, offset, length, how), reply)
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _in = self.handover.gate.enter();
        // The kernel answers SEEK_SET/CUR/END itself and only asks for these two.
        let what = match whence {
            libc::SEEK_DATA => Seek::Data,
            libc::SEEK_HOLE => Seek::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.fs.seek(ino.0, offset, what) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _in = self.handover.gate.enter();
        // One reply carries at most u32::MAX bytes; callers loop on short copies.
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        match self
            .fs
            .copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _in = self.handover.gate.enter();
        // No ioctls; programs probe a few (isatty's TCGETS) and expect ENOTTY, quietly.
        reply.error(Errno::ENOTTY)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _in = self.handover.gate.enter();
        match self.listing(ino.0, fh.0, offset) {
            Ok(entries) => {
                for (i, (ino, k, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(
                        INodeNo(*ino),
                        (i + 1) as u64,
                        kind(*k),
                        OsStr::from_bytes(name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _in = self.handover.gate.enter();
        match self.listing(ino.0, fh.0, offset) {
            Ok(entries) => {
                for (i, (ino, _, name)) in entries.iter().enumerate().skip(offset as usize) {
                    let a = match self.fs.getattr(*ino) {
                        Ok(a) => a,
                        Err(e) => return reply.error(errno(&e)),
                    };
                    if reply.add(
                        INodeNo(*ino),
                        (i + 1) as u64,
                        OsStr::from_bytes(name),
                        &self.ttl,
                        &attr(&a, self.bs()),
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _in = self.handover.gate.enter();
        let fh = self
            .handover
            .next_dir_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.fs.options().remote {
            // Close-to-open for directories too: a listing shows what the cluster has now.
            if let Err(e) = self.fs.revalidate() {
                return reply.error(errno(&e));
            }
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        }
        // The kernel may keep listings: every change to a directory goes through this mount,
        // and the kernel drops its cached listing when it makes one.
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        )
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _in = self.handover.gate.enter();
        self.listings.lock().remove(&fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.handover.gate.enter();
        Self::empty(self.fs.sync_all(), reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _in = self.handover.gate.enter();
        let (total, used, files) = self.fs.statfs();
        let bs = self.fs.block_size() as u64;
        let blocks = total / bs;
        let free = total.saturating_sub(used) / bs;
        reply.statfs(
            blocks,
            free,
            free,
            files + (1 << 32),
            1 << 32,
            bs as u32,
            255,
            bs as u32,
        )
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _in = self.handover.gate.enter();
        let r = self.fs.setxattr(
            ino.0,
            name.as_bytes(),
            value,
            flags & libc::XATTR_CREATE != 0,
            flags & libc::XATTR_REPLACE != 0,
        );
        Self::empty(r, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _in = self.handover.gate.enter();
        match self.fs.getxattr(ino.0, name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _in = self.handover.gate.enter();
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() > size as usize {
                    reply.error(Errno::from_i32(libc::ERANGE))
                } else {
                    reply.data(&buf)
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _in = self.handover.gate.enter();
        Self::empty(self.fs.removexattr(ino.0, name.as_bytes()), reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _in = self.handover.gate.enter();
        let r = self.fs.mknod(
            parent.0,
            name.as_bytes(),
            Kind::File,
            mode,
            0,
            b"",
            Caller {
                umask,
                ..caller(req)
            },
        );
        let i = match r {
            Ok(i) => i,
            Err(e) => return reply.error(errno(&e)),
        };
        match self.fs.open(i.ino, flags & libc::O_TRUNC != 0) {
            Ok(fh) => reply.created(
                &self.ttl,
                &attr(&i, self.bs()),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
