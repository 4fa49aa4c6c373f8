//! Extended attributes, and the mount's own status attribute.

use super::{now, AteFs, STATUS_XATTR};
use crate::error::{FsError, FsResult};
use crate::records::ROOT_INO;

impl AteFs {
    /// Reads an extended attribute.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if name == STATUS_XATTR && ino == ROOT_INO {
            return Ok(self.status().into_bytes());
        }
        refuse_unsupported_xattr(name)?;
        let a = self.getattr(ino)?;
        a.xattrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or(FsError::NoAttr)
    }

    /// Names of all extended attributes.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        Ok(self
            .getattr(ino)?
            .xattrs
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// Sets an extended attribute (`create`: must not exist; `replace`: must exist).
    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> FsResult<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(FsError::Range);
        }
        refuse_unsupported_xattr(name)?;
        if value.len() > 64 << 10 {
            return Err(FsError::TooBig);
        }
        let mut st = self.state.lock();
        let node = self.node(&mut st, ino)?;
        let pos = node.attr.xattrs.iter().position(|(n, _)| n == name);
        match (pos, create, replace) {
            (Some(_), true, _) => return Err(FsError::Exists),
            (None, _, true) => return Err(FsError::NoAttr),
            (Some(i), _, _) => node.attr.xattrs[i].1 = value.to_vec(),
            (None, _, _) => {
                node.attr.xattrs.push((name.to_vec(), value.to_vec()));
                node.attr.xattrs.sort();
            }
        }
        node.attr.ctime = now();
        // An access ACL carries the permission bits: owner = user_obj, group = mask (or
        // group_obj without a mask), other = other. Keep the mode in step, as every POSIX
        // file system does; the kernel checks permissions against both.
        if name == crate::acl::ACCESS {
            if let Some(bits) = crate::acl::mode_bits(value) {
                node.attr.perm = (node.attr.perm & 0o7000) | bits;
            }
        }
        node.attr_dirty = true;
        Ok(())
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        refuse_unsupported_xattr(name)?;
        let mut st = self.state.lock();
        let node = self.node(&mut st, ino)?;
        let pos = node
            .attr
            .xattrs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or(FsError::NoAttr)?;
        node.attr.xattrs.remove(pos);
        node.attr.ctime = now();
        node.attr_dirty = true;
        Ok(())
    }
}

/// SELinux labels are not stored: on a FUSE mount the kernel labels every file from the
/// mount's context (genfscon or `context=`) and never consults a per-file label, so a stored
/// one would be a label nothing enforces. Answering "not supported" rather than "no such
/// attribute" also lets tools stop asking: `ls -l` queries `security.selinux` once per file
/// (the kernel never caches the answer) unless the device says it has no labels at all.
/// Names starting `atefs.` are the mount's own (see [`STATUS_XATTR`]): never stored.
fn refuse_unsupported_xattr(name: &[u8]) -> FsResult<()> {
    if name == b"security.selinux" || name.starts_with(b"atefs.") {
        return Err(FsError::NotSupported);
    }
    Ok(())
}
