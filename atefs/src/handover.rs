//! Handing a live mount from one daemon to the next without unmounting it.
//!
//! A FUSE mount lives as long as someone holds its `/dev/fuse` descriptor. To restart the
//! daemon of a mount that pods are using (a node agent upgraded, docs/kubernetes.md), the old
//! daemon stops taking requests (gate.rs), commits everything it buffers, and passes the
//! descriptor and what the kernel knows about it (open file handles, the capabilities the
//! kernel offered at `FUSE_INIT`) over a unix socket (`SCM_RIGHTS`). The new daemon serves the
//! same descriptor: the mount, its inode numbers (which are the chain's) and every open file
//! stay. Requests that arrived while the gate was closed were read by the old daemon and never
//! answered; once it has exited the new one asks the kernel to send them again
//! (`FUSE_NOTIFY_RESEND`, Linux 6.9, FUSE 7.40), so none is lost and none is done twice.
//!
//! fuser's `Session::from_fd` insists on an `FUSE_INIT` handshake, which the kernel never
//! sends twice; the new session is therefore first given one end of a socket pair holding a
//! copy of the original `FUSE_INIT` (its reply goes nowhere), and its descriptor then turned
//! into the live `/dev/fuse` one (`dup3`).
//!
//! The exchange, on a stream socket: the taker sends a [`Request`]; the holder answers with a
//! [`Reply`] (carrying the descriptor when it is `Ready`); the taker answers `ack` once it
//! holds the descriptor; the holder exits without unmounting; the taker waits for the volume
//! lock the holder had (it goes with the holder's last thread), opens the volume and serves.

use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The version of the exchange and of what [`State`] means. Bump it when either changes,
/// or when the capabilities the file system asks for at `FUSE_INIT` (fuse.rs) change: the
/// kernel keeps what the first daemon negotiated.
pub const PROTOCOL: u32 = 1;

/// The first FUSE minor version with `FUSE_NOTIFY_RESEND`.
const RESEND_MINOR: u32 = 40;
const FUSE_INIT: u32 = 26;
const FUSE_NOTIFY_RESEND: i32 = 7;
const FUSE_INIT_EXT: u64 = 1 << 30;
/// Messages are small (a handle is two numbers); anything larger is not from a daemon.
const MAX_MESSAGE: usize = 64 << 20;

/// Why a handover failed.
#[derive(Debug, Error)]
pub enum HandoverError {
    /// A system call or the socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The other side sent something this version does not understand.
    #[error("handover protocol: {0}")]
    Protocol(String),
    /// The holder refused (its message).
    #[error("the running daemon refused the handover: {0}")]
    Refused(String),
    /// This kernel cannot resend requests (Linux 6.9 and later can).
    #[error("the kernel's FUSE {0}.{1} has no FUSE_NOTIFY_RESEND (7.40, Linux 6.9): a handover could lose requests")]
    NoResend(u32, u32),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> HandoverError {
    move |source| HandoverError::Io { what, source }
}

/// What the kernel told the first daemon at `FUSE_INIT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInit {
    /// FUSE ABI major version.
    pub major: u32,
    /// FUSE ABI minor version.
    pub minor: u32,
    /// The capabilities it offered.
    pub capabilities: u64,
    /// Its largest readahead.
    pub max_readahead: u32,
}

impl KernelInit {
    /// Whether the kernel can resend requests the old daemon read and never answered.
    pub fn can_resend(&self) -> Result<(), HandoverError> {
        if self.major > 7 || (self.major == 7 && self.minor >= RESEND_MINOR) {
            Ok(())
        } else {
            Err(HandoverError::NoResend(self.major, self.minor))
        }
    }
}

/// What the new daemon needs besides the descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The old daemon's arguments (after the program name): how to open the same volume.
    pub args: Vec<String>,
    /// The first `FUSE_INIT`.
    pub init: KernelInit,
    /// Open file handles: (handle, inode).
    pub handles: Vec<(u64, u64)>,
    /// The next file handle to give out.
    pub next_fh: u64,
    /// The next directory handle to give out (directory handles need no other state).
    pub next_dir_fh: u64,
}

/// The taker's request.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// [`PROTOCOL`] of the taker.
    pub protocol: u32,
}

/// The taker's confirmation that it holds the descriptor: the holder then exits.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ack {
    /// Always true.
    pub taken: bool,
}

/// The holder's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The descriptor comes with this message.
    Ready(State),
    /// No handover; the holder serves on.
    Refused(String),
}

/// A unix socket path short enough for `sockaddr_un` (108 bytes) however deep its directory:
/// the directory through a descriptor, `/proc/self/fd/N/NAME`. Keep the guard while the path is
/// used.
#[derive(Debug)]
pub struct ShortPath {
    _dir: OwnedFd,
    path: PathBuf,
}

impl ShortPath {
    /// See the type.
    pub fn new(path: &Path) -> Result<Self, HandoverError> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let name = path.file_name().ok_or_else(|| {
            HandoverError::Protocol(format!("{} is no file name", path.display()))
        })?;
        let dir = rustix::fs::open(
            dir.unwrap_or(Path::new(".")),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io("opening the handover socket's directory")(e.into()))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(Self { _dir: dir, path })
    }

    /// The path to bind or connect.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Listens for a taker at `path` (replacing a socket left there; mode 0600: whoever takes
/// the descriptor reads and writes the volume).
pub fn listen(path: &Path) -> Result<UnixListener, HandoverError> {
    use std::os::unix::fs::PermissionsExt;
    let short = ShortPath::new(path)?;
    match std::fs::remove_file(short.path()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing an old handover socket")(e)),
    }
    let l = UnixListener::bind(short.path()).map_err(io("binding the handover socket"))?;
    std::fs::set_permissions(short.path(), std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod of the handover socket"))?;
    Ok(l)
}

/// Connects to the daemon holding a mount.
pub fn connect(path: &Path) -> Result<UnixStream, HandoverError> {
    let short = ShortPath::new(path)?;
    UnixStream::connect(short.path()).map_err(io("connecting to the running daemon"))
}

/// Sends one message (a length and JSON), with `fd` attached when given.
pub fn send<T: Serialize>(
    s: &mut UnixStream,
    msg: &T,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), HandoverError> {
    let body = serde_json::to_vec(msg).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    let len = (body.len() as u64).to_le_bytes();
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)) {
        return Err(HandoverError::Protocol("no room for the descriptor".into()));
    }
    let mut sent = rustix::net::sendmsg(
        s.as_fd(),
        &[IoSlice::new(&len)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )
    .map_err(|e| io("sending to the other daemon")(e.into()))?;
    // The descriptor went with the first byte; the rest is plain data.
    while sent < len.len() {
        sent += s
            .write(&len[sent..])
            .map_err(io("sending to the other daemon"))?;
    }
    s.write_all(&body)
        .map_err(io("sending to the other daemon"))?;
    Ok(())
}

/// Receives one message and the descriptor that came with it, if any. `Ok(None)` at the end
/// of the stream.
pub fn receive<T: serde::de::DeserializeOwned>(
    s: &mut UnixStream,
) -> Result<Option<(T, Option<OwnedFd>)>, HandoverError> {
    let mut len = [0u8; 8];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        s.as_fd(),
        &mut [IoSliceMut::new(&mut len)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io("receiving from the other daemon")(e.into()))?;
    let mut fd = None;
    for msg in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = msg {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    if got.bytes == 0 {
        return Ok(None);
    }
    s.read_exact(&mut len[got.bytes..])
        .map_err(io("receiving from the other daemon"))?;
    let n = u64::from_le_bytes(len);
    let n = usize::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_MESSAGE)
        .ok_or_else(|| HandoverError::Protocol(format!("a message of {n} bytes")))?;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)
        .map_err(io("receiving from the other daemon"))?;
    let msg = serde_json::from_slice(&body).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    Ok(Some((msg, fd)))
}

/// A `FUSE_INIT` request as the kernel sent it to the first daemon.
fn init_request(init: &KernelInit) -> Vec<u8> {
    let mut m = Vec::with_capacity(104);
    let flags = init.capabilities | FUSE_INIT_EXT;
    // fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding.
    m.extend_from_slice(&104u32.to_le_bytes());
    m.extend_from_slice(&FUSE_INIT.to_le_bytes());
    m.extend_from_slice(&1u64.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&[0u8; 16]);
    // fuse_init_in: major, minor, max_readahead, flags, flags2, unused[11].
    m.extend_from_slice(&init.major.to_le_bytes());
    m.extend_from_slice(&init.minor.to_le_bytes());
    m.extend_from_slice(&init.max_readahead.to_le_bytes());
    m.extend_from_slice(&(flags as u32).to_le_bytes());
    m.extend_from_slice(&((flags >> 32) as u32).to_le_bytes());
    m.extend_from_slice(&[0u8; 44]);
    m
}

/// A session of `fs` on a `/dev/fuse` descriptor whose `FUSE_INIT` a former daemon answered
/// (see the module documentation), started in the background.
#[allow(unsafe_code)] // one dup3 onto the session's descriptor; see SAFETY below
pub fn resume_session<FS: fuser::Filesystem + Send + 'static>(
    fs: FS,
    fuse: OwnedFd,
    init: &KernelInit,
    config: fuser::Config,
) -> Result<fuser::BackgroundSession, HandoverError> {
    init.can_resend()?;
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io("socketpair")(e.into()))?;
    rustix::io::write(&ours, &init_request(init)).map_err(|e| io("writing FUSE_INIT")(e.into()))?;
    let raw = theirs.as_raw_fd();
    let session = fuser::Session::from_fd(fs, theirs, config.acl, config)
        .map_err(io("the FUSE_INIT handshake of the new session"))?;
    let mut reply = [0u8; 256];
    let n = rustix::io::read(&ours, &mut reply)
        .map_err(|e| io("reading FUSE_INIT's reply")(e.into()))?;
    let error = reply
        .get(4..8)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(-1);
    if n < 16 || error != 0 {
        return Err(HandoverError::Protocol(format!(
            "the new session answered FUSE_INIT with error {error}"
        )));
    }
    // SAFETY: `raw` is the session's own descriptor, open for as long as the session is (we
    // hold the session). It is not closed here (ManuallyDrop): dup3 only makes the number
    // refer to the live /dev/fuse file instead of the socket, atomically, before any thread
    // reads from it (the session has not been spawned yet). Close-on-exec as before.
    let mut target = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(raw) });
    rustix::io::dup3(&fuse, &mut target, rustix::io::DupFlags::CLOEXEC)
        .map_err(|e| io("dup3 onto the session")(e.into()))?;
    drop(fuse);
    session.spawn().map_err(io("starting the FUSE session"))
}

/// Asks the kernel to send again every request a daemon read and did not answer (the old
/// daemon's, held at its gate). `fuse` is the mount's `/dev/fuse` descriptor.
pub fn resend(fuse: BorrowedFd<'_>) -> Result<(), HandoverError> {
    // fuse_out_header: len, error (the notification's code), unique 0.
    let mut m = Vec::with_capacity(16);
    m.extend_from_slice(&16u32.to_le_bytes());
    m.extend_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    rustix::io::write(fuse, &m).map_err(|e| io("FUSE_NOTIFY_RESEND")(e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn messages_carry_a_descriptor_and_end_cleanly() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let state = State {
            args: vec!["mount".into(), "/mnt/x".into()],
            init: KernelInit {
                major: 7,
                minor: 45,
                capabilities: 0x1234_5678_9abc,
                max_readahead: 1 << 20,
            },
            handles: vec![(1, 7), (3, 7), (4, 9)],
            next_fh: 5,
            next_dir_fh: 12,
        };
        send(&mut a, &Reply::Ready(state.clone()), Some(file.as_fd())).unwrap();
        send(&mut a, &Reply::Refused("no".into()), None).unwrap();
        drop(a);
        let (got, fd) = receive::<Reply>(&mut b).unwrap().unwrap();
        assert!(matches!(got, Reply::Ready(s) if s == state));
        let fd = fd.expect("the descriptor");
        let (ino_a, ino_b) = (
            rustix::fs::fstat(&fd).unwrap().st_ino,
            rustix::fs::fstat(&file).unwrap().st_ino,
        );
        assert_eq!(ino_a, ino_b, "the same file came across");
        let (got, fd) = receive::<Reply>(&mut b).unwrap().unwrap();
        assert!(matches!(got, Reply::Refused(m) if m == "no") && fd.is_none());
        assert!(receive::<Reply>(&mut b).unwrap().is_none());
    }

    #[test]
    fn an_oversized_message_is_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&(1u64 << 40).to_le_bytes()).unwrap();
        assert!(matches!(
            receive::<Reply>(&mut b),
            Err(HandoverError::Protocol(_))
        ));
    }

    #[test]
    fn init_is_laid_out_as_the_kernel_sends_it() {
        let m = init_request(&KernelInit {
            major: 7,
            minor: 45,
            capabilities: 1 << 40 | 1,
            max_readahead: 4096,
        });
        assert_eq!(m.len(), 104);
        assert_eq!(&m[0..4], &104u32.to_le_bytes());
        assert_eq!(&m[4..8], &26u32.to_le_bytes());
        assert_eq!(&m[40..44], &7u32.to_le_bytes());
        assert_eq!(&m[44..48], &45u32.to_le_bytes());
        assert_eq!(&m[52..56], &((1u32 << 30) | 1).to_le_bytes());
        assert_eq!(&m[56..60], &(1u32 << 8).to_le_bytes());
    }

    #[test]
    fn old_kernels_cannot_take_a_handover() {
        let old = KernelInit {
            major: 7,
            minor: 39,
            ..Default::default()
        };
        assert!(matches!(
            old.can_resend(),
            Err(HandoverError::NoResend(7, 39))
        ));
        let new = KernelInit { minor: 40, ..old };
        assert!(new.can_resend().is_ok());
    }

    #[test]
    fn a_socket_in_a_deep_directory_is_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        std::fs::create_dir(&deep).unwrap();
        let path = deep.join("handover.sock");
        let l = listen(&path).unwrap();
        let mut c = connect(&path).unwrap();
        let (mut s, _) = l.accept().unwrap();
        send(&mut c, &Request { protocol: PROTOCOL }, None).unwrap();
        let (r, _) = receive::<Request>(&mut s).unwrap().unwrap();
        assert_eq!(r.protocol, PROTOCOL);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
