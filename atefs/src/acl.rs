//! POSIX ACLs in their xattr form (version 2 header, then 8-byte entries: u16 tag, u16 perm,
//! u32 id), as far as the file system must understand them: the permission bits an access
//! ACL implies, and what a new inode inherits from its directory's default ACL. The kernel
//! enforces ACLs (FUSE_POSIX_ACL); it leaves both of these to the file system.

/// The access ACL's xattr name.
pub(crate) const ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL's xattr name (directories only).
pub(crate) const DEFAULT: &[u8] = b"system.posix_acl_default";

const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

fn parse(value: &[u8]) -> Option<Vec<Entry>> {
    let (head, entries) = value.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != 2 || entries.len() % 8 != 0 {
        return None;
    }
    Some(
        entries
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect(),
    )
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

fn bits(entries: &[Entry]) -> Option<u16> {
    let find = |tag| entries.iter().find(|e| e.tag == tag).map(|e| e.perm & 7);
    Some((find(USER_OBJ)? << 6) | (find(MASK).or(find(GROUP_OBJ))? << 3) | find(OTHER)?)
}

/// Permission bits implied by an access ACL: owner = user_obj, group = mask (group_obj
/// without a mask), other = other. None when it does not parse.
pub(crate) fn mode_bits(value: &[u8]) -> Option<u16> {
    bits(&parse(value)?)
}

/// A new inode under a directory with default ACL `default`, created with permission bits
/// `perm` (umask not applied: a default ACL replaces the umask). Returns the new inode's
/// permission bits and, when the inherited ACL says more than those bits can, its access ACL.
/// None when the default ACL does not parse.
pub(crate) fn inherit(default: &[u8], perm: u16) -> Option<(u16, Option<Vec<u8>>)> {
    let mut entries = parse(default)?;
    let has_mask = entries.iter().any(|e| e.tag == MASK);
    for e in &mut entries {
        let limit = match e.tag {
            USER_OBJ => perm >> 6,
            MASK => perm >> 3,
            GROUP_OBJ if !has_mask => perm >> 3,
            OTHER => perm,
            _ => 7,
        };
        e.perm &= limit & 7;
    }
    let mode = bits(&entries)?;
    let extended = entries
        .iter()
        .any(|e| !matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER));
    Some((mode, extended.then(|| encode(&entries))))
}
