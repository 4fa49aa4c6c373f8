//! Volume capabilities: what an atefs volume can be used as.

use crate::pb;
use crate::pb::volume_capability::access_mode::Mode;
use crate::pb::volume_capability::AccessType;
use tonic::Status;

/// Checks a capability: a file system (not a block device) of a known access mode.
pub fn check_capability(cap: Option<&pb::VolumeCapability>) -> Result<Mode, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    match &cap.access_type {
        Some(AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() && m.fs_type != "atefs" && m.fs_type != "fuse.atefs" {
                return Err(Status::invalid_argument(format!(
                    "fs_type {:?}: atefs volumes are atefs file systems",
                    m.fs_type
                )));
            }
        }
        Some(AccessType::Block(_)) => {
            return Err(Status::invalid_argument(
                "atefs volumes are file systems; block access is not supported",
            ))
        }
        None => {
            return Err(Status::invalid_argument(
                "volume_capability needs an access type",
            ))
        }
    }
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    if mode == Mode::Unknown {
        return Err(Status::invalid_argument(
            "volume_capability needs a known access mode",
        ));
    }
    Ok(mode)
}
