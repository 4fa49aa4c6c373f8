//! Reference model of the core without a kernel: random namespace and data operations against
//! a plain map of paths, including remounts (a reopen of the chain) between steps.
#![allow(clippy::unwrap_used)]
#![allow(clippy::map_entry)] // the model mirrors the code under test, check then insert

mod common;

use atefs::records::{Kind, ROOT_INO};
use atefs::{AteFs, FsError, FsOptions, RenameMode, SetAttr};
use common::{mem_fs, open, small_blocks, ROOT};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Paths are (directory index, name index): directory 0 is the root, 1 and 2 are subdirectories
/// created up front, names are "n0".."n3".
#[derive(Clone, Debug)]
enum Step {
    Create(u8, u8),
    Mkdir(u8, u8),
    Write(u8, u8, u16, Vec<u8>),
    Truncate(u8, u8, u16),
    Unlink(u8, u8),
    Rmdir(u8, u8),
    Rename(u8, u8, u8, u8),
    Link(u8, u8, u8, u8),
    Fsync(u8, u8),
    Remount,
}

#[derive(Clone, Debug, PartialEq)]
enum MNode {
    File(usize),
    /// A directory, with a unique id (two directories are never the same node).
    Dir(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let d = 0u8..3;
    let n = 0u8..4;
    prop_oneof![
        3 => (d.clone(), n.clone()).prop_map(|(d, n)| Step::Create(d, n)),
        1 => (d.clone(), n.clone()).prop_map(|(d, n)| Step::Mkdir(d, n)),
        4 => (d.clone(), n.clone(), 0u16..100, proptest::collection::vec(any::<u8>(), 1..60)).prop_map(|(d, n, o, b)| Step::Write(d, n, o, b)),
        1 => (d.clone(), n.clone(), 0u16..120).prop_map(|(d, n, s)| Step::Truncate(d, n, s)),
        2 => (d.clone(), n.clone()).prop_map(|(d, n)| Step::Unlink(d, n)),
        1 => (d.clone(), n.clone()).prop_map(|(d, n)| Step::Rmdir(d, n)),
        2 => (d.clone(), n.clone(), d.clone(), n.clone()).prop_map(|(a, b, c, e)| Step::Rename(a, b, c, e)),
        1 => (d.clone(), n.clone(), d, n).prop_map(|(a, b, c, e)| Step::Link(a, b, c, e)),
        2 => (0u8..3, 0u8..4).prop_map(|(d, n)| Step::Fsync(d, n)),
        1 => Just(Step::Remount),
    ]
}

struct Model {
    /// (dir, name) -> node; files refer to an entry in `data` (hard links share it).
    names: BTreeMap<(u8, u8), MNode>,
    data: Vec<Vec<u8>>,
}

fn name(n: u8) -> Vec<u8> {
    format!("n{n}").into_bytes()
}

fn check(fs: &AteFs, dirs: &[u64; 3], m: &Model) {
    for (d, dino) in dirs.iter().enumerate() {
        let listed: Vec<Vec<u8>> = fs
            .readdir(*dino)
            .unwrap()
            .into_iter()
            .skip(2)
            .map(|e| e.2)
            .filter(|n| n != b"d1" && n != b"d2")
            .collect();
        let want: Vec<Vec<u8>> = m
            .names
            .keys()
            .filter(|(dd, _)| *dd as usize == d)
            .map(|(_, n)| name(*n))
            .collect();
        assert_eq!(listed, want, "listing of dir {d}");
        for ((dd, n), node) in m.names.iter().filter(|((dd, _), _)| *dd as usize == d) {
            let a = fs.lookup(*dino, &name(*n)).unwrap();
            match node {
                MNode::Dir(_) => assert_eq!(a.kind, Kind::Dir),
                MNode::File(i) => {
                    let want = &m.data[*i];
                    assert_eq!(a.size as usize, want.len(), "size of {dd}/{n}");
                    assert_eq!(
                        &fs.read(a.ino, 0, 1000).unwrap(),
                        want,
                        "content of {dd}/{n}"
                    );
                    let links = m.names.values().filter(|v| **v == MNode::File(*i)).count() as u32;
                    assert_eq!(a.nlink, links, "nlink of {dd}/{n}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn core_matches_model(steps in proptest::collection::vec(step(), 1..40)) {
        run(steps, small_blocks)?;
    }

    /// With room for two inodes in memory, nearly every call drops clean inodes and loads
    /// them again from the chain (shed.rs): nothing a call changed may be lost.
    #[test]
    fn core_matches_model_with_two_inodes_in_memory(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        run(steps, || FsOptions { node_cache: 2, ..small_blocks() })?;
    }
}

fn run(steps: Vec<Step>, opts: impl Fn() -> FsOptions) -> Result<(), TestCaseError> {
    {
        let (mem, keys, fs0) = mem_fs(opts());
        let mut fs = fs0;
        let d1 = fs
            .mknod(ROOT_INO, b"d1", Kind::Dir, 0o755, 0, b"", ROOT)
            .unwrap()
            .ino;
        let d2 = fs
            .mknod(ROOT_INO, b"d2", Kind::Dir, 0o755, 0, b"", ROOT)
            .unwrap()
            .ino;
        // d1 and d2 live in the root but are not part of the model's names.
        let dirs = [ROOT_INO, d1, d2];
        let mut m = Model {
            names: BTreeMap::new(),
            data: Vec::new(),
        };
        for s in steps {
            match s {
                Step::Create(d, n) | Step::Mkdir(d, n) => {
                    let dir = matches!(s, Step::Mkdir(..));
                    let kind = if dir { Kind::Dir } else { Kind::File };
                    let r = fs.mknod(dirs[d as usize], &name(n), kind, 0o644, 0, b"", ROOT);
                    if m.names.contains_key(&(d, n)) {
                        prop_assert!(matches!(r, Err(FsError::Exists)));
                    } else {
                        r.unwrap();
                        m.data.push(Vec::new());
                        let node = if dir {
                            MNode::Dir(m.data.len() - 1)
                        } else {
                            MNode::File(m.data.len() - 1)
                        };
                        m.names.insert((d, n), node);
                    }
                }
                Step::Write(d, n, off, bytes) => {
                    if let Some(MNode::File(i)) = m.names.get(&(d, n)) {
                        let ino = fs.lookup(dirs[d as usize], &name(n)).unwrap().ino;
                        fs.write(ino, off as u64, &bytes).unwrap();
                        let f = &mut m.data[*i];
                        let end = off as usize + bytes.len();
                        if f.len() < end {
                            f.resize(end, 0);
                        }
                        f[off as usize..end].copy_from_slice(&bytes);
                    }
                }
                Step::Truncate(d, n, size) => {
                    if let Some(MNode::File(i)) = m.names.get(&(d, n)) {
                        let ino = fs.lookup(dirs[d as usize], &name(n)).unwrap().ino;
                        fs.setattr(
                            ino,
                            &SetAttr {
                                size: Some(size as u64),
                                ..Default::default()
                            },
                        )
                        .unwrap();
                        m.data[*i].resize(size as usize, 0);
                    }
                }
                Step::Unlink(d, n) => {
                    let r = fs.unlink(dirs[d as usize], &name(n));
                    match m.names.get(&(d, n)) {
                        None => prop_assert!(matches!(r, Err(FsError::NotFound))),
                        Some(MNode::Dir(_)) => prop_assert!(matches!(r, Err(FsError::IsDir))),
                        Some(MNode::File(_)) => {
                            r.unwrap();
                            m.names.remove(&(d, n));
                        }
                    }
                }
                Step::Rmdir(d, n) => {
                    let r = fs.rmdir(dirs[d as usize], &name(n));
                    match m.names.get(&(d, n)) {
                        None => prop_assert!(matches!(r, Err(FsError::NotFound))),
                        Some(MNode::File(_)) => prop_assert!(matches!(r, Err(FsError::NotDir))),
                        // Model directories never get children (names live in dirs 0..3 only).
                        Some(MNode::Dir(_)) => {
                            r.unwrap();
                            m.names.remove(&(d, n));
                        }
                    }
                }
                Step::Rename(d, n, d2, n2) => {
                    let r = fs.rename(
                        dirs[d as usize],
                        &name(n),
                        dirs[d2 as usize],
                        &name(n2),
                        RenameMode::Replace,
                    );
                    let src = m.names.get(&(d, n)).cloned();
                    let dst = m.names.get(&(d2, n2)).cloned();
                    match (src, dst) {
                        (None, _) => prop_assert!(matches!(r, Err(FsError::NotFound))),
                        (Some(MNode::Dir(_)), Some(MNode::File(_))) => {
                            prop_assert!(matches!(r, Err(FsError::NotDir)))
                        }
                        (Some(MNode::File(_)), Some(MNode::Dir(_))) => {
                            prop_assert!(matches!(r, Err(FsError::IsDir)))
                        }
                        (Some(a), Some(b)) if a == b => r.unwrap(), // same file (hard links) or same name
                        (Some(a), _) => {
                            r.unwrap();
                            m.names.remove(&(d, n));
                            m.names.insert((d2, n2), a);
                        }
                    }
                }
                Step::Link(d, n, d2, n2) => {
                    let src = m.names.get(&(d, n)).cloned();
                    let Some(src_node) = src else { continue };
                    let ino = fs.lookup(dirs[d as usize], &name(n)).unwrap().ino;
                    let r = fs.link(ino, dirs[d2 as usize], &name(n2));
                    if matches!(src_node, MNode::Dir(_)) {
                        prop_assert!(r.is_err());
                    } else if m.names.contains_key(&(d2, n2)) {
                        prop_assert!(matches!(r, Err(FsError::Exists)));
                    } else {
                        r.unwrap();
                        m.names.insert((d2, n2), src_node);
                    }
                }
                Step::Fsync(d, n) => {
                    // Commits land and the in-flight copies go: reads now come from the chain
                    // (and its block cache).
                    if let Ok(a) = fs.lookup(dirs[d as usize], &name(n)) {
                        fs.fsync(a.ino).unwrap();
                    }
                }
                Step::Remount => {
                    fs.flush_all().unwrap();
                    drop(fs);
                    fs = open(&mem, &keys, opts());
                }
            }
            check(&fs, &dirs, &m);
        }
        let report = fs.fsck().unwrap();
        prop_assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
    }
    Ok(())
}
