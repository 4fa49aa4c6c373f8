//! Namespace changes: creating, linking, removing and renaming names. Each is one signed
//! transaction, committed before the call returns, with `Absent` preconditions on new names
//! so that two writers racing for one name get one success and one EEXIST.

use super::{check_name, now, AteFs, Caller, Node, RenameMode, State};
use crate::error::{FsError, FsResult};
use crate::records::{Dirent, Inode, Kind, ROOT_INO};
use ate::{Op, Precondition, RecordKey, Transaction};
use std::collections::BTreeMap;
use std::time::SystemTime;

impl AteFs {
    /// Creates a file, directory, symlink or special file.
    #[allow(clippy::too_many_arguments)] // mirrors mknod(2) plus symlink's target and the caller
    pub fn mknod(
        &self,
        dir: u64,
        name: &[u8],
        kind: Kind,
        perm: u32,
        rdev: u32,
        target: &[u8],
        who: Caller,
    ) -> FsResult<Inode> {
        check_name(name)?;
        let mut st = self.state.lock();
        self.shed(&mut st);
        if self.entries(&mut st, dir)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let parent = self.node(&mut st, dir)?.attr.clone();
        let ino = loop {
            let i: u64 = rand::random();
            if i > ROOT_INO
                && !st.nodes.contains_key(&i)
                && self.chain.record(&self.keys.inode(i)).is_none()
            {
                break i;
            }
        };
        let mut perm = (perm & 0o7777) as u16;
        let default_acl = parent
            .xattrs
            .iter()
            .find(|(n, _)| n == crate::acl::DEFAULT)
            .map(|(_, v)| v.clone())
            .filter(|_| kind != Kind::Symlink);
        let inherited = default_acl
            .as_deref()
            .and_then(|d| crate::acl::inherit(d, perm & 0o777));
        perm = match &inherited {
            Some((bits, _)) => (perm & 0o7000) | bits,
            None => perm & !(who.umask as u16 & 0o777),
        };
        // BSD group semantics under a setgid directory, as Linux does.
        let gid = if parent.perm & 0o2000 != 0 {
            if kind == Kind::Dir {
                perm |= 0o2000;
            }
            parent.gid
        } else {
            who.gid
        };
        let mut node = Inode::new(ino, kind, perm, who.uid, gid);
        node.rdev = rdev;
        if let Some((_, Some(access))) = inherited {
            node.xattrs.push((crate::acl::ACCESS.to_vec(), access));
        }
        if let (Kind::Dir, Some(d)) = (kind, default_acl) {
            node.xattrs.push((crate::acl::DEFAULT.to_vec(), d));
        }
        node.xattrs.sort();
        if kind == Kind::Dir {
            node.parent = dir;
        }
        if kind == Kind::Symlink {
            node.target = target.to_vec();
            node.size = target.len() as u64;
        }
        let t = now();
        let mut p = parent;
        p.mtime = t;
        p.ctime = t;
        if kind == Kind::Dir {
            p.nlink += 1;
        }
        let mut tx = self.tx();
        tx.preconditions
            .push(Precondition::Absent(self.keys.dirent(dir, name)));
        // The inode number is new too; saying so lets a batch drop a create undone later.
        tx.preconditions
            .push(Precondition::Absent(self.keys.inode(ino)));
        tx.ops.push(self.put_inode(&node));
        tx.ops.push(self.put_dirent(
            dir,
            &Dirent {
                name: name.to_vec(),
                ino,
                kind,
            },
        ));
        tx.ops.push(self.put_inode(&p));
        self.commit(&mut st, tx)?;
        self.node(&mut st, dir)?.attr = p;
        self.entries(&mut st, dir)?
            .insert(name.to_vec(), (ino, kind));
        let used = st.next_tick();
        st.nodes.insert(
            ino,
            Node {
                attr: node.clone(),
                entries: (kind == Kind::Dir).then(BTreeMap::new),
                dirty: BTreeMap::new(),
                dirty_bytes: 0,
                inflight: BTreeMap::new(),
                flushes: 0,
                pending: Vec::new(),
                blocks: Some(Default::default()),
                attr_dirty: false,
                open: 0,
                used,
            },
        );
        Ok(node)
    }

    /// Symlink target.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let a = self.getattr(ino)?;
        if a.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(a.target)
    }

    /// Adds a hard link.
    pub fn link(&self, ino: u64, dir: u64, name: &[u8]) -> FsResult<Inode> {
        check_name(name)?;
        let mut st = self.state.lock();
        self.shed(&mut st);
        if self.entries(&mut st, dir)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        // Attributes are committed with the next data commit or by the flusher (batched).
        let mut target = self.node(&mut st, ino)?.attr.clone();
        if target.kind == Kind::Dir {
            return Err(FsError::NotPermitted);
        }
        if target.nlink >= 65_000 {
            return Err(FsError::TooManyLinks);
        }
        let t = now();
        target.nlink += 1;
        target.ctime = t;
        let mut p = self.node(&mut st, dir)?.attr.clone();
        p.mtime = t;
        p.ctime = t;
        let mut tx = self.tx();
        tx.preconditions
            .push(Precondition::Absent(self.keys.dirent(dir, name)));
        tx.ops.push(self.put_dirent(
            dir,
            &Dirent {
                name: name.to_vec(),
                ino,
                kind: target.kind,
            },
        ));
        tx.ops.push(self.put_inode(&target));
        tx.ops.push(self.put_inode(&p));
        self.commit(&mut st, tx)?;
        self.node(&mut st, dir)?.attr = p;
        self.entries(&mut st, dir)?
            .insert(name.to_vec(), (ino, target.kind));
        self.node(&mut st, ino)?.attr = target.clone();
        Ok(target)
    }

    /// Removes a name (files, symlinks, special files).
    pub fn unlink(&self, dir: u64, name: &[u8]) -> FsResult<()> {
        self.remove(dir, name, false)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, dir: u64, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(FsError::Invalid("rmdir ."));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        self.remove(dir, name, true)
    }

    pub(super) fn remove(&self, dir: u64, name: &[u8], want_dir: bool) -> FsResult<()> {
        let mut st = self.state.lock();
        let (ino, kind) = *self
            .entries(&mut st, dir)?
            .get(name)
            .ok_or(FsError::NotFound)?;
        match (want_dir, kind == Kind::Dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            _ => {}
        }
        if want_dir && !self.entries(&mut st, ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        let t = now();
        let mut p = self.node(&mut st, dir)?.attr.clone();
        p.mtime = t;
        p.ctime = t;
        if want_dir {
            p.nlink -= 1;
        }
        let mut tx = self.tx();
        tx.ops.push(Op::Delete {
            key: self.keys.dirent(dir, name),
        });
        tx.ops.push(self.put_inode(&p));
        let gone = self.drop_link(&mut st, ino, &mut tx, want_dir, t)?;
        self.commit(&mut st, tx)?;
        self.node(&mut st, dir)?.attr = p;
        self.entries(&mut st, dir)?.remove(name);
        self.after_drop_link(&mut st, ino, gone, want_dir, t)?;
        Ok(())
    }

    /// Adds to `tx` what losing one link of `ino` does; returns true when the inode goes away now.
    pub(super) fn drop_link(
        &self,
        st: &mut State,
        ino: u64,
        tx: &mut Transaction,
        is_dir: bool,
        t: SystemTime,
    ) -> FsResult<bool> {
        let node = self.node(st, ino)?;
        let mut a = node.attr.clone();
        let links = if is_dir { 0 } else { a.nlink.saturating_sub(1) };
        if links == 0 && node.open == 0 {
            // Which of its blocks are stored is known once its commits are answered; one that
            // failed (a full volume) put its blocks back among the buffered ones, which go
            // with the file and need no deletion.
            if let Err(e) = self.settle(st, ino, true) {
                tracing::debug!(ino, error = %e, "buffered data of a removed file dropped");
            }
            let node = self.node(st, ino)?;
            let blocks: Vec<RecordKey> = if node.attr.kind == Kind::File {
                let set = std::mem::take(self.block_set(st, ino)?);
                self.uncache(ino, 0);
                self.stored(st, ino, set)
                    .into_iter()
                    .map(|i| self.keys.block(ino, i))
                    .collect()
            } else {
                Vec::new()
            };
            let node = self.node(st, ino)?;
            node.dirty.clear();
            node.inflight.clear();
            node.dirty_bytes = 0;
            // Large files: delete their blocks in earlier transactions of their own.
            let (first, rest) = blocks.split_at(blocks.len().min(2048));
            for chunk in rest.chunks(4000) {
                let mut del = self.tx();
                del.ops.extend(chunk.iter().map(|k| Op::Delete { key: *k }));
                self.commit(&mut *st, del)?;
            }
            tx.ops.extend(first.iter().map(|k| Op::Delete { key: *k }));
            tx.ops.push(Op::Delete {
                key: self.keys.inode(ino),
            });
            return Ok(true);
        }
        a.nlink = links;
        a.ctime = t;
        tx.ops.push(self.put_inode(&a));
        Ok(false)
    }

    fn after_drop_link(
        &self,
        st: &mut State,
        ino: u64,
        gone: bool,
        is_dir: bool,
        t: SystemTime,
    ) -> FsResult<()> {
        if gone {
            st.nodes.remove(&ino);
            st.deleted.insert(ino);
        } else if let Some(n) = st.nodes.get_mut(&ino) {
            n.attr.nlink = if is_dir {
                0
            } else {
                n.attr.nlink.saturating_sub(1)
            };
            n.attr.ctime = t;
        }
        Ok(())
    }

    /// True when directory `dir` is `ancestor` or lies below it (walking ".." to the root).
    fn is_within(&self, st: &mut State, dir: u64, ancestor: u64) -> FsResult<bool> {
        let mut cur = dir;
        loop {
            if cur == ancestor {
                return Ok(true);
            }
            if cur == ROOT_INO {
                return Ok(false);
            }
            cur = self.node(st, cur)?.attr.parent;
        }
    }

    /// Renames `name` in `dir` to `new_name` in `new_dir`.
    pub fn rename(
        &self,
        dir: u64,
        name: &[u8],
        new_dir: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> FsResult<()> {
        check_name(new_name)?;
        if name == b"." || name == b".." {
            return Err(FsError::Invalid("rename of . or .."));
        }
        let mut st = self.state.lock();
        let (src, src_kind) = *self
            .entries(&mut st, dir)?
            .get(name)
            .ok_or(FsError::NotFound)?;
        let dst = self.entries(&mut st, new_dir)?.get(new_name).copied();
        if dir == new_dir && name == new_name {
            return match mode {
                RenameMode::NoReplace => Err(FsError::Exists),
                _ => Ok(()),
            };
        }
        // A directory may not move below itself.
        if src_kind == Kind::Dir && dir != new_dir && self.is_within(&mut st, new_dir, src)? {
            return Err(FsError::Invalid("directory moved below itself"));
        }
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => return Err(FsError::Exists),
            (RenameMode::Exchange, None) => return Err(FsError::NotFound),
            _ => {}
        }
        if mode == RenameMode::Exchange {
            if let Some((dst_ino, dst_kind)) = dst {
                if dst_kind == Kind::Dir
                    && new_dir != dir
                    && self.is_within(&mut st, dir, dst_ino)?
                {
                    return Err(FsError::Invalid("directory moved below itself"));
                }
            }
        }
        if let (RenameMode::Replace, Some((dst_ino, dst_kind))) = (mode, dst) {
            if dst_ino == src {
                return Ok(()); // two names of one file: POSIX says do nothing
            }
            match (src_kind == Kind::Dir, dst_kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.entries(&mut st, dst_ino)?.is_empty() => {
                    return Err(FsError::NotEmpty)
                }
                _ => {}
            }
        }
        let t = now();
        let mut tx = self.tx();
        let mut parents: BTreeMap<u64, Inode> = BTreeMap::new();
        for d in [dir, new_dir] {
            let mut a = self.node(&mut st, d)?.attr.clone();
            a.mtime = t;
            a.ctime = t;
            parents.insert(d, a);
        }
        let mut moved = self.node(&mut st, src)?.attr.clone();
        moved.ctime = t;
        let mut gone = None;
        match (mode, dst) {
            (RenameMode::Exchange, Some((dst_ino, dst_kind))) => {
                let mut other = self.node(&mut st, dst_ino)?.attr.clone();
                other.ctime = t;
                tx.ops.push(self.put_dirent(
                    new_dir,
                    &Dirent {
                        name: new_name.to_vec(),
                        ino: src,
                        kind: src_kind,
                    },
                ));
                tx.ops.push(self.put_dirent(
                    dir,
                    &Dirent {
                        name: name.to_vec(),
                        ino: dst_ino,
                        kind: dst_kind,
                    },
                ));
                if dir != new_dir {
                    if src_kind == Kind::Dir {
                        moved.parent = new_dir;
                        adjust(&mut parents, dir, -1);
                        adjust(&mut parents, new_dir, 1);
                    }
                    if dst_kind == Kind::Dir {
                        other.parent = dir;
                        adjust(&mut parents, new_dir, -1);
                        adjust(&mut parents, dir, 1);
                    }
                }
                tx.ops.push(self.put_inode(&other));
                self.node(&mut st, dst_ino)?.attr = other;
            }
            _ => {
                tx.ops.push(Op::Delete {
                    key: self.keys.dirent(dir, name),
                });
                tx.ops.push(self.put_dirent(
                    new_dir,
                    &Dirent {
                        name: new_name.to_vec(),
                        ino: src,
                        kind: src_kind,
                    },
                ));
                if src_kind == Kind::Dir && dir != new_dir {
                    moved.parent = new_dir;
                    adjust(&mut parents, dir, -1);
                    adjust(&mut parents, new_dir, 1);
                }
                if let Some((dst_ino, dst_kind)) = dst {
                    if dst_kind == Kind::Dir {
                        adjust(&mut parents, new_dir, -1);
                    }
                    gone = Some((
                        dst_ino,
                        dst_kind,
                        self.drop_link(&mut st, dst_ino, &mut tx, dst_kind == Kind::Dir, t)?,
                    ));
                } else {
                    tx.preconditions
                        .push(Precondition::Absent(self.keys.dirent(new_dir, new_name)));
                }
            }
        }
        tx.ops.push(self.put_inode(&moved));
        for a in parents.values() {
            if a.ino != src {
                tx.ops.push(self.put_inode(a));
            }
        }
        self.commit(&mut st, tx)?;
        self.node(&mut st, src)?.attr = moved;
        for (d, a) in parents {
            self.node(&mut st, d)?.attr = a;
        }
        match mode {
            RenameMode::Exchange => {
                if let Some(e) = dst {
                    self.entries(&mut st, dir)?.insert(name.to_vec(), e);
                }
            }
            _ => {
                self.entries(&mut st, dir)?.remove(name);
            }
        }
        self.entries(&mut st, new_dir)?
            .insert(new_name.to_vec(), (src, src_kind));
        if let Some((ino, kind, g)) = gone {
            self.after_drop_link(&mut st, ino, g, kind == Kind::Dir, t)?;
        }
        Ok(())
    }
}

fn adjust(parents: &mut BTreeMap<u64, Inode>, dir: u64, by: i32) {
    if let Some(a) = parents.get_mut(&dir) {
        a.nlink = a.nlink.saturating_add_signed(by);
    }
}
