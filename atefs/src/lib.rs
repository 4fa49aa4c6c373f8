//! atefs: a POSIX file system over an ate chain.
//!
//! - [`records`]: what is stored (inodes, directory entries, data blocks) and under which keys.
//! - [`fs`]: the file-system core, plain Rust, tested without a kernel.
//! - [`fuse`]: the thin fuser adapter.
//! - [`error`]: errors and their one errno mapping.
//! - [`volume`]: opening a volume's state directory (keys, chain, lock).
//! - [`handover`] (with [`gate`]): passing a live mount to a new daemon.

mod acl;
mod batch;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod gate;
pub mod gather;
pub mod handover;
pub mod quota;
pub mod records;
pub mod volume;

pub use error::{FsError, FsResult};
pub use fs::{Allocate, AteFs, Caller, FsOptions, RenameMode, Seek, SetAttr};
