//! What the kernel has mounted where, from `/proc/self/mountinfo`: the only record of a node's
//! volumes that survives a restart of the plugin (kubelet retries every call; the answer must
//! come from what is mounted, not from what this process remembers). The agent reads it too,
//! to tell a daemon that handed its mount over from one that served it to the end. The CSI
//! plugin uses it as `csi_driver::mountinfo`.

use std::path::{Path, PathBuf};

/// One mount (a line of mountinfo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The device (`major:minor`); a bind mount shares its source's.
    pub device: String,
    /// The directory of the file system mounted here (`/` unless a bind of a subdirectory).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// This mount's own `ro` flag (a read-only bind of a writable file system has it).
    pub read_only: bool,
    /// File system type, e.g. `fuse.atefs`.
    pub fs_type: String,
    /// The mount source (for atefs: `atefs`).
    pub source: String,
}

/// Octal escapes (`\040` for a space) as the kernel writes paths in mountinfo.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line; None for a line of another shape.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    let (head, tail) = line.split_once(" - ")?;
    let f: Vec<&str> = head.split(' ').collect();
    let t: Vec<&str> = tail.split(' ').collect();
    if f.len() < 6 || t.len() < 2 {
        return None;
    }
    Some(MountEntry {
        device: f[2].to_string(),
        root: PathBuf::from(unescape(f[3])),
        mount_point: PathBuf::from(unescape(f[4])),
        read_only: f[5].split(',').any(|o| o == "ro"),
        fs_type: t[0].to_string(),
        source: unescape(t[1]),
    })
}

/// Every mount of this process's namespace, in mount order.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// What is visible at `path`: the last mount on it (mounts stack), if any.
pub fn at(path: &Path) -> std::io::Result<Option<MountEntry>> {
    Ok(read()?.into_iter().rev().find(|m| m.mount_point == path))
}

/// True for the mounts atefs makes: its source is `atefs`; the type is `fuse.atefs` when
/// mounted through fusermount, plain `fuse` when the daemon mounts /dev/fuse itself (as root).
pub fn is_atefs(m: &MountEntry) -> bool {
    m.fs_type == "fuse.atefs" || (m.fs_type == "fuse" && m.source == "atefs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fuse_mount_with_optional_fields_and_escapes() {
        let line = "812 29 0:77 / /var/lib/kubelet/pods/x/vol\\040a rw,nosuid,nodev,relatime shared:450 master:1 - fuse.atefs atefs rw,user_id=0,group_id=0,default_permissions,allow_other";
        let m = parse_line(line).expect("a mount");
        assert_eq!(m.device, "0:77");
        assert_eq!(m.root, PathBuf::from("/"));
        assert_eq!(
            m.mount_point,
            PathBuf::from("/var/lib/kubelet/pods/x/vol a")
        );
        assert!(!m.read_only);
        assert!(is_atefs(&m));
        assert_eq!(m.source, "atefs");
    }

    #[test]
    fn sees_a_read_only_bind() {
        let line = "90 29 0:77 / /t ro,relatime shared:1 - fuse.atefs atefs rw,user_id=0";
        let m = parse_line(line).expect("a mount");
        assert!(
            m.read_only,
            "the per-mount ro flag, not the super-block's rw"
        );
    }

    #[test]
    fn tells_atefs_from_other_fuse_mounts() {
        let root = parse_line("5 1 0:50 / /m rw - fuse atefs rw,user_id=0").expect("a mount");
        assert!(is_atefs(&root));
        let other = parse_line("5 1 0:50 / /m rw - fuse sshfs rw,user_id=0").expect("a mount");
        assert!(!is_atefs(&other));
    }

    #[test]
    fn refuses_lines_of_another_shape() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("1 2 3"), None);
        assert_eq!(parse_line("1 2 0:1 / /x rw - "), None);
    }

    #[test]
    fn reads_this_process_mounts() {
        let all = read().expect("mountinfo");
        assert!(all.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
