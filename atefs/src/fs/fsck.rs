//! Checking a volume's tree against its chain.

use super::AteFs;
use crate::error::{FsError, FsResult};
use crate::records::{Kind, ROOT_INO};
use ate::RecordKey;
use std::collections::HashMap;

/// What [`AteFs::fsck`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// Directories walked.
    pub dirs: u64,
    /// Non-directories found.
    pub files: u64,
    /// Every inconsistency, one line each (empty when the tree is consistent).
    pub problems: Vec<String>,
}

impl AteFs {
    /// Walks the whole tree from the root and checks it against the chain: every entry names an
    /// existing inode of the entry's kind, link counts match the entries (files) and
    /// subdirectories (directories), ".." is right, and no data block lies past a file's end.
    pub fn fsck(&self) -> FsResult<FsckReport> {
        self.flush_all()?;
        let mut report = FsckReport::default();
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut stack = vec![(ROOT_INO, ROOT_INO)];
        let bs = self.opts.block_size as u64;
        let mut seen_dirs = std::collections::HashSet::new();
        while let Some((dir, parent)) = stack.pop() {
            if !seen_dirs.insert(dir) {
                report
                    .problems
                    .push(format!("directory {dir} is reachable twice"));
                continue;
            }
            report.dirs += 1;
            let a = self.getattr(dir)?;
            if a.parent != parent {
                report.problems.push(format!(
                    "directory {dir}: '..' is {}, expected {parent}",
                    a.parent
                ));
            }
            let entries = self.readdir(dir)?;
            let mut subdirs = 0;
            for (ino, kind, name) in entries.into_iter().skip(2) {
                let shown = String::from_utf8_lossy(&name).into_owned();
                let child = match self.getattr(ino) {
                    Ok(c) => c,
                    Err(FsError::NotFound) => {
                        report
                            .problems
                            .push(format!("{dir}/{shown}: inode {ino} does not exist"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if child.kind != kind {
                    report.problems.push(format!(
                        "{dir}/{shown}: entry says {kind:?}, inode is {:?}",
                        child.kind
                    ));
                }
                if child.kind == Kind::Dir {
                    subdirs += 1;
                    stack.push((ino, dir));
                } else {
                    let first_sight = !links.contains_key(&ino);
                    *links.entry(ino).or_default() += 1;
                    if first_sight {
                        report.files += 1;
                        let valid: std::collections::HashSet<RecordKey> =
                            (0..child.size.div_ceil(bs))
                                .map(|i| self.keys.block(ino, i))
                                .collect();
                        let stray = self
                            .chain
                            .children(&self.keys.inode(ino))
                            .iter()
                            .filter(|k| !valid.contains(k))
                            .count();
                        if stray > 0 {
                            report.problems.push(format!(
                                "{dir}/{shown}: {stray} data blocks past the end of the file"
                            ));
                        }
                    }
                }
            }
            if a.nlink != 2 + subdirs {
                report.problems.push(format!(
                    "directory {dir}: nlink {} but {subdirs} subdirectories",
                    a.nlink
                ));
            }
        }
        for (ino, n) in links {
            let a = self.getattr(ino)?;
            if a.nlink != n {
                report
                    .problems
                    .push(format!("inode {ino}: nlink {} but {n} entries", a.nlink));
            }
        }
        Ok(report)
    }
}
