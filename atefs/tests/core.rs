//! The file-system core without a kernel.
#![allow(clippy::unwrap_used)]

mod common;

use atefs::records::{Kind, ROOT_INO};
use atefs::{Allocate, FsError, FsOptions, RenameMode, Seek, SetAttr};
use common::{mem_fs, open, small_blocks, ROOT};

#[test]
fn files_survive_reopen_across_block_boundaries_and_holes() {
    let (mem, keys, fs) = mem_fs(small_blocks());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    fs.write(f.ino, 5, b"hello world, this spans blocks")
        .unwrap();
    fs.write(f.ino, 100, b"after a hole").unwrap();
    fs.fsync(f.ino).unwrap();
    drop(fs);
    let fs = open(&mem, &keys, small_blocks());
    let got = fs.read(f.ino, 0, 1000).unwrap();
    let mut want = vec![0u8; 112];
    want[5..35].copy_from_slice(b"hello world, this spans blocks");
    want[100..].copy_from_slice(b"after a hole");
    assert_eq!(got, want);
    assert_eq!(fs.lookup(ROOT_INO, b"f").unwrap().size, 112);
}

#[test]
fn reads_into_a_reused_buffer_see_only_the_file() {
    // Whole blocks are opened straight into the caller's buffer, which holds the previous
    // read's bytes: holes, short blocks and the file's tail must come out as zeros anyway.
    let (mem, keys, fs) = mem_fs(small_blocks());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    fs.write(f.ino, 0, &[1u8; 40]).unwrap();
    fs.write(f.ino, 70, &[2u8; 3]).unwrap();
    fs.write(f.ino, 100, &[3u8; 21]).unwrap();
    fs.fsync(f.ino).unwrap();
    // The block holding 16..32 shrinks to its first 4 bytes, committed.
    fs.write(f.ino, 20, &[0u8; 12]).unwrap();
    fs.fsync(f.ino).unwrap();
    drop(fs);
    let fs = open(&mem, &keys, small_blocks());
    let mut want = [0u8; 121];
    want[..20].fill(1);
    want[32..40].fill(1);
    want[70..73].fill(2);
    want[100..].fill(3);
    let mut buf = vec![0xaau8; 4096];
    for (off, len) in [
        (0, 4096),
        (16, 48),
        (64, 57),
        (3, 100),
        (96, 4096),
        (0, 121),
    ] {
        buf.fill(0xaa);
        let n = fs.read_into(f.ino, off, len, &mut buf).unwrap();
        let end = (off as usize + len).min(want.len());
        assert_eq!(&buf[..n], &want[off as usize..end], "read {off}+{len}");
        assert_eq!(fs.read(f.ino, off, len).unwrap(), &want[off as usize..end]);
    }
    // A buffer shorter than the read grows.
    let mut short = vec![0xaau8; 5];
    let n = fs.read_into(f.ino, 0, 121, &mut short).unwrap();
    assert_eq!(&short[..n], &want[..]);
}

#[test]
fn reads_of_runs_of_committed_blocks_see_only_the_file() {
    // Whole committed blocks are read with one read per run of them in the log and opened
    // where they land (ate's Chain::read_blocks_into); a rewrite breaks a run, a hole sends
    // the read one block at a time. Every read must see the file.
    let (mem, keys, fs) = mem_fs(small_blocks());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    let pattern = |n: usize, x: u8| (0..n).map(|i| (i * 7 % 251) as u8 ^ x).collect::<Vec<_>>();
    let size = |fs: &atefs::AteFs, n| {
        let s = SetAttr {
            size: Some(n),
            ..SetAttr::default()
        };
        fs.setattr(f.ino, &s).unwrap();
    };
    fs.write(f.ino, 0, &pattern(300, 1)).unwrap();
    fs.fsync(f.ino).unwrap();
    // Block 4 cut short, a hole after it, blocks 5.. written again; block 9 rewritten after
    // that (elsewhere in the log); the file extended past its short tail block by a hole.
    size(&fs, 68);
    size(&fs, 80);
    fs.write(f.ino, 80, &pattern(220, 0x55)).unwrap();
    fs.fsync(f.ino).unwrap();
    fs.write(f.ino, 150, &[0xee; 2]).unwrap();
    fs.fsync(f.ino).unwrap();
    size(&fs, 400);
    fs.fsync(f.ino).unwrap();
    let mut want = vec![0u8; 400];
    want[..68].copy_from_slice(&pattern(68, 1));
    want[80..300].copy_from_slice(&pattern(220, 0x55));
    want[150..152].fill(0xee);
    drop(fs);
    let fs = open(&mem, &keys, small_blocks());
    let mut buf = vec![0xaau8; 8];
    for (off, len) in [
        (0, 4096),
        (0, 64),
        (80, 64),
        (96, 48),
        (128, 64),
        (144, 32),
        (160, 144),
        (288, 16),
        (288, 112),
        (272, 200),
        (80, 320),
        (5, 300),
    ] {
        buf.iter_mut().for_each(|b| *b = 0xaa);
        let n = fs.read_into(f.ino, off, len, &mut buf).unwrap();
        let end = (off as usize + len).min(want.len());
        assert_eq!(&buf[..n], &want[off as usize..end], "read {off}+{len}");
    }
}

#[test]
fn truncate_shrinks_and_zero_extends() {
    let (_, _, fs) = mem_fs(small_blocks());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    fs.write(f.ino, 0, &[7u8; 50]).unwrap();
    fs.fsync(f.ino).unwrap();
    fs.setattr(
        f.ino,
        &SetAttr {
            size: Some(20),
            ..Default::default()
        },
    )
    .unwrap();
    fs.setattr(
        f.ino,
        &SetAttr {
            size: Some(40),
            ..Default::default()
        },
    )
    .unwrap();
    let got = fs.read(f.ino, 0, 100).unwrap();
    assert_eq!(&got[..20], &[7u8; 20]);
    assert_eq!(&got[20..], &[0u8; 20]);
}

#[test]
fn namespace_errors() {
    let (_, _, fs) = mem_fs(FsOptions::default());
    let d = fs
        .mknod(ROOT_INO, b"d", Kind::Dir, 0o755, 0, b"", ROOT)
        .unwrap();
    fs.mknod(d.ino, b"x", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    assert!(matches!(
        fs.mknod(ROOT_INO, b"d", Kind::File, 0o644, 0, b"", ROOT),
        Err(FsError::Exists)
    ));
    assert!(matches!(fs.rmdir(ROOT_INO, b"d"), Err(FsError::NotEmpty)));
    assert!(matches!(fs.unlink(ROOT_INO, b"d"), Err(FsError::IsDir)));
    assert!(matches!(fs.rmdir(d.ino, b"x"), Err(FsError::NotDir)));
    assert!(matches!(
        fs.lookup(ROOT_INO, &[b'a'; 256]),
        Err(FsError::NameTooLong)
    ));
    assert!(matches!(
        fs.rename(ROOT_INO, b"d", d.ino, b"inside", RenameMode::Replace),
        Err(FsError::Invalid(_))
    ));
    assert!(matches!(
        fs.link(d.ino, ROOT_INO, b"dirlink"),
        Err(FsError::NotPermitted)
    ));
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
}

#[test]
fn hard_links_count_and_outlive_names() {
    let (_, _, fs) = mem_fs(FsOptions::default());
    let f = fs
        .mknod(ROOT_INO, b"a", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    fs.write(f.ino, 0, b"data").unwrap();
    fs.link(f.ino, ROOT_INO, b"b").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 2);
    fs.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 1);
    assert_eq!(
        fs.read(fs.lookup(ROOT_INO, b"b").unwrap().ino, 0, 10)
            .unwrap(),
        b"data"
    );
    // Unlinked while open: readable until released, gone after.
    let fh = fs.open(f.ino, false).unwrap();
    fs.unlink(ROOT_INO, b"b").unwrap();
    assert_eq!(fs.read(f.ino, 0, 10).unwrap(), b"data");
    fs.release(fh).unwrap();
    assert!(matches!(fs.getattr(f.ino), Err(FsError::NotFound)));
}

#[test]
fn rename_replace_noreplace_exchange() {
    let (_, _, fs) = mem_fs(FsOptions::default());
    let d1 = fs
        .mknod(ROOT_INO, b"d1", Kind::Dir, 0o755, 0, b"", ROOT)
        .unwrap();
    let d2 = fs
        .mknod(ROOT_INO, b"d2", Kind::Dir, 0o755, 0, b"", ROOT)
        .unwrap();
    let a = fs
        .mknod(d1.ino, b"a", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    let b = fs
        .mknod(d2.ino, b"b", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    assert!(matches!(
        fs.rename(d1.ino, b"a", d2.ino, b"b", RenameMode::NoReplace),
        Err(FsError::Exists)
    ));
    fs.rename(d1.ino, b"a", d2.ino, b"b", RenameMode::Exchange)
        .unwrap();
    assert_eq!(fs.lookup(d2.ino, b"b").unwrap().ino, a.ino);
    assert_eq!(fs.lookup(d1.ino, b"a").unwrap().ino, b.ino);
    fs.rename(d1.ino, b"a", d2.ino, b"b", RenameMode::Replace)
        .unwrap();
    assert_eq!(fs.lookup(d2.ino, b"b").unwrap().ino, b.ino);
    assert!(matches!(fs.lookup(d1.ino, b"a"), Err(FsError::NotFound)));
    assert!(
        matches!(fs.getattr(a.ino), Err(FsError::NotFound)),
        "replaced file is freed"
    );
    // Moving a directory updates both parents' link counts and its "..".
    fs.rename(ROOT_INO, b"d1", d2.ino, b"d1", RenameMode::Replace)
        .unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(fs.getattr(d2.ino).unwrap().nlink, 3);
    assert_eq!(fs.lookup(d1.ino, b"..").unwrap().ino, d2.ino);
}

#[test]
fn racing_creates_of_one_name_give_one_eexist() {
    // Two file systems over one chain (as two mounts over one replicated chain will be): each
    // has its own cache, so only the chain's precondition can arbitrate.
    let (mem, keys, fs1) = mem_fs(FsOptions {
        sync_namespace: true,
        ..FsOptions::default()
    });
    let storage: std::sync::Arc<dyn ate::storage::Storage> = std::sync::Arc::new(mem);
    drop(storage);
    let shared = FsOptions {
        sync_namespace: true,
        ..FsOptions::default()
    };
    let fs2 = atefs::AteFs::new(fs1.chain().clone(), keys, shared, ROOT).unwrap();
    let r1 = fs1.mknod(ROOT_INO, b"same", Kind::File, 0o644, 0, b"", ROOT);
    let r2 = fs2.mknod(ROOT_INO, b"same", Kind::File, 0o644, 0, b"", ROOT);
    assert!(r1.is_ok());
    assert!(
        matches!(r2, Err(ref e) if e.errno() == libc::EEXIST),
        "{r2:?}"
    );
}

#[test]
fn xattrs() {
    let (_, _, fs) = mem_fs(FsOptions::default());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    fs.setxattr(f.ino, b"user.k", b"v", false, false).unwrap();
    assert!(matches!(
        fs.setxattr(f.ino, b"user.k", b"v", true, false),
        Err(FsError::Exists)
    ));
    assert!(matches!(
        fs.setxattr(f.ino, b"user.z", b"v", false, true),
        Err(FsError::NoAttr)
    ));
    assert_eq!(fs.getxattr(f.ino, b"user.k").unwrap(), b"v");
    assert_eq!(fs.listxattr(f.ino).unwrap(), vec![b"user.k".to_vec()]);
    fs.removexattr(f.ino, b"user.k").unwrap();
    assert!(matches!(
        fs.getxattr(f.ino, b"user.k"),
        Err(FsError::NoAttr)
    ));
}

#[test]
fn selinux_labels_are_not_supported_but_other_security_xattrs_are() {
    let (_, _, fs) = mem_fs(FsOptions::default());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    for r in [
        fs.getxattr(f.ino, b"security.selinux").map(drop),
        fs.setxattr(f.ino, b"security.selinux", b"u:r:x", false, false),
        fs.removexattr(f.ino, b"security.selinux"),
    ] {
        assert!(matches!(r, Err(FsError::NotSupported)), "{r:?}");
    }
    fs.setxattr(f.ino, b"security.capability", b"c", false, false)
        .unwrap();
    assert_eq!(fs.getxattr(f.ino, b"security.capability").unwrap(), b"c");
    assert_eq!(
        fs.listxattr(f.ino).unwrap(),
        vec![b"security.capability".to_vec()]
    );
}

#[test]
fn truncate_of_a_committed_block_never_serves_the_old_block_from_cache() {
    // Regression (found by fsx): truncate reads the tail block to cut it, which cached the old
    // block; once the cut block was committed, reads returned the cached old one.
    let (_, _, fs) = mem_fs(FsOptions::default());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    fs.write(f.ino, 0, &[0x8a; 1000]).unwrap();
    fs.fsync(f.ino).unwrap();
    fs.setattr(
        f.ino,
        &SetAttr {
            size: Some(100),
            ..Default::default()
        },
    )
    .unwrap();
    fs.fsync(f.ino).unwrap();
    fs.setattr(
        f.ino,
        &SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    let got = fs.read(f.ino, 0, 1000).unwrap();
    assert_eq!(&got[..100], &[0x8a; 100][..]);
    assert!(
        got[100..].iter().all(|b| *b == 0),
        "bytes past the cut came back"
    );
}

#[test]
fn punch_hole_zero_range_and_seek_data_hole() {
    // 16-byte blocks: [0,16) [16,32) [32,48) [48,64) [64,80)
    let (mem, keys, fs) = mem_fs(small_blocks());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    fs.write(f.ino, 0, &[1u8; 40]).unwrap();
    fs.fsync(f.ino).unwrap();
    fs.write(f.ino, 64, &[2u8; 16]).unwrap();
    // Block 3 is a hole; block 4 is only buffered.
    assert_eq!(fs.seek(f.ino, 0, Seek::Data).unwrap(), 0);
    assert_eq!(fs.seek(f.ino, 0, Seek::Hole).unwrap(), 48);
    assert_eq!(fs.seek(f.ino, 50, Seek::Data).unwrap(), 64);
    assert_eq!(fs.seek(f.ino, 70, Seek::Hole).unwrap(), 80);
    assert!(matches!(
        fs.seek(f.ino, 80, Seek::Data),
        Err(FsError::NoSuchOffset)
    ));

    // Punch [10, 35): block 1 goes, blocks 0 and 2 are cut; the size stays.
    fs.fallocate(f.ino, 10, 25, Allocate::PunchHole).unwrap();
    let got = fs.read(f.ino, 0, 100).unwrap();
    let mut want = vec![0u8; 80];
    want[..10].fill(1);
    want[35..40].fill(1);
    want[64..].fill(2);
    assert_eq!(got, want);
    assert_eq!(fs.seek(f.ino, 12, Seek::Hole).unwrap(), 16);
    assert_eq!(fs.seek(f.ino, 16, Seek::Data).unwrap(), 32);

    // Zero range past the end extends the file; a reservation without KEEP_SIZE too.
    fs.fallocate(f.ino, 70, 20, Allocate::ZeroRange { keep_size: false })
        .unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 90);
    fs.fallocate(f.ino, 0, 200, Allocate::Reserve { keep_size: true })
        .unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 90);
    fs.fallocate(f.ino, 0, 200, Allocate::Reserve { keep_size: false })
        .unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 200);
    want[70..80].fill(0);
    want.resize(200, 0);
    assert_eq!(fs.read(f.ino, 0, 300).unwrap(), want);

    // It all survives a remount, and the punched block is gone from the chain.
    fs.fsync(f.ino).unwrap();
    drop(fs);
    let fs = open(&mem, &keys, small_blocks());
    assert_eq!(fs.read(f.ino, 0, 300).unwrap(), want);
    assert_eq!(fs.seek(f.ino, 16, Seek::Data).unwrap(), 32);
    assert!(fs.fsck().unwrap().problems.is_empty());
}

#[test]
fn copy_range_copies_data_and_stops_at_the_source_end() {
    let (_, _, fs) = mem_fs(small_blocks());
    let a = fs
        .mknod(ROOT_INO, b"a", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    let b = fs
        .mknod(ROOT_INO, b"b", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    let data: Vec<u8> = (0..100u8).collect();
    fs.write(a.ino, 0, &data).unwrap();
    assert_eq!(fs.copy_range(a.ino, 30, b.ino, 5, 1000).unwrap(), 70);
    let got = fs.read(b.ino, 0, 200).unwrap();
    assert_eq!(&got[..5], &[0u8; 5]);
    assert_eq!(&got[5..], &data[30..]);
    assert!(matches!(
        fs.fallocate(ROOT_INO, 0, 1, Allocate::PunchHole),
        Err(FsError::IsDir)
    ));
}

#[test]
fn default_acls_are_inherited_instead_of_the_umask() {
    let (_, _, fs) = mem_fs(FsOptions::default());
    let d = fs
        .mknod(ROOT_INO, b"d", Kind::Dir, 0o755, 0, b"", ROOT)
        .unwrap();
    // default: user::rwx, user:65534:rw-, group::r-x, mask::rwx, other::---
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, 6, 65534),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    fs.setxattr(d.ino, b"system.posix_acl_default", &acl, false, false)
        .unwrap();
    let umask_022 = atefs::Caller {
        umask: 0o022,
        ..ROOT
    };
    // A file asked for 0666: the mask becomes rw- (limited by the group bits), other ---;
    // the umask plays no part.
    let f = fs
        .mknod(d.ino, b"f", Kind::File, 0o666, 0, b"", umask_022)
        .unwrap();
    assert_eq!(f.perm, 0o660);
    let access = fs.getxattr(f.ino, b"system.posix_acl_access").unwrap();
    assert_eq!(&access[4 + 3 * 8 + 2..4 + 3 * 8 + 4], &6u16.to_le_bytes()); // mask
    assert!(matches!(
        fs.getxattr(f.ino, b"system.posix_acl_default"),
        Err(FsError::NoAttr)
    ));
    // A subdirectory inherits the default ACL itself as well.
    let sub = fs
        .mknod(d.ino, b"sub", Kind::Dir, 0o777, 0, b"", umask_022)
        .unwrap();
    assert_eq!(sub.perm, 0o770);
    assert_eq!(
        fs.getxattr(sub.ino, b"system.posix_acl_default").unwrap(),
        acl
    );
    // Without a default ACL the umask applies.
    let g = fs
        .mknod(ROOT_INO, b"g", Kind::File, 0o666, 0, b"", umask_022)
        .unwrap();
    assert_eq!(g.perm, 0o644);
}

#[test]
fn rewrites_are_compacted_away_and_the_data_survives() {
    let opts = FsOptions {
        compact_slack: 0,
        ..small_blocks()
    };
    let (mem, keys, fs) = mem_fs(opts.clone());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    for round in 0..50u8 {
        fs.write(f.ino, 0, &[round; 64]).unwrap();
        fs.fsync(f.ino).unwrap();
    }
    let before = fs.chain().stats();
    assert!(before.bytes > 2 * before.live_bytes, "{before:?}");
    assert!(fs.maybe_compact().unwrap());
    let after = fs.chain().stats();
    assert!(after.bytes < before.bytes / 2, "{before:?} -> {after:?}");
    // Nothing left to gain: the next check does not compact again.
    assert!(!fs.maybe_compact().unwrap());
    fs.write(f.ino, 64, b"after").unwrap();
    fs.fsync(f.ino).unwrap();
    drop(fs);
    let fs = open(&mem, &keys, opts);
    let mut want = vec![49u8; 64];
    want.extend_from_slice(b"after");
    assert_eq!(fs.read(f.ino, 0, 100).unwrap(), want);
    assert!(fs.fsck().unwrap().problems.is_empty());
}

/// Reads open committed blocks without the state lock while writers replace them: whatever
/// the interleaving, once the writes are committed every read sees the last version (a read
/// that opened an old version must not have left it in the block cache). Smoke test of the
/// generation rule in block_cache.rs (its unit test pins the rule itself).
#[test]
fn reads_racing_writes_never_cache_a_stale_block() {
    let (_, _, fs) = mem_fs(small_blocks());
    let f = fs
        .mknod(ROOT_INO, b"f", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    let len = 4 * small_blocks().block_size;
    fs.write(f.ino, 0, &vec![0u8; len]).unwrap();
    fs.fsync(f.ino).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = fs.read(f.ino, 0, len).unwrap();
                    assert_eq!(got.len(), len);
                }
            });
        }
        for round in 1..=200u8 {
            fs.write(f.ino, 0, &vec![round; len]).unwrap();
            if round % 10 == 0 {
                fs.fsync(f.ino).unwrap();
            }
        }
        fs.fsync(f.ino).unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(fs.read(f.ino, 0, len).unwrap(), vec![200u8; len]);
}

#[test]
fn a_quota_bounds_what_the_volume_holds_not_what_was_written_to_it() {
    let opts = FsOptions {
        quota_bytes: 1 << 20,
        ..FsOptions::default()
    };
    let (_mem, _keys, fs) = mem_fs(opts);
    let a = fs
        .mknod(ROOT_INO, b"a", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    // Rewritten twenty times over (5 MiB written to a 1 MiB volume), as `cp` or an editor
    // rewrites a file: truncated, written, synced.
    let truncate = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    for round in 0..20u8 {
        fs.setattr(a.ino, &truncate).unwrap();
        fs.write(a.ino, 0, &vec![round; 256 << 10]).unwrap();
        fs.fsync(a.ino).unwrap();
    }
    let (total, used, _) = fs.statfs();
    assert_eq!(total, 1 << 20);
    assert!((256 << 10..300 << 10).contains(&used), "used {used}");
    // What does not fit in what is left is refused.
    let b = fs
        .mknod(ROOT_INO, b"b", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    let big = vec![1u8; 900 << 10];
    assert!(matches!(fs.write(b.ino, 0, &big), Err(FsError::NoSpace)));
    // Deleting makes room for it.
    fs.unlink(ROOT_INO, b"a").unwrap();
    fs.write(b.ino, 0, &big).unwrap();
    fs.fsync(b.ino).unwrap();
    let (_, used, _) = fs.statfs();
    assert!((900 << 10..1 << 20).contains(&used), "used {used}");
    assert_eq!(fs.read(b.ino, 0, 1 << 20).unwrap(), big);
}

#[test]
fn data_written_once_is_not_compacted_and_deleted_data_gives_its_disk_back() {
    let opts = FsOptions {
        compact_slack: 0,
        ..FsOptions::default()
    };
    let (_mem, _keys, fs) = mem_fs(opts);
    let names: Vec<Vec<u8>> = (0..16).map(|i| format!("f{i}").into_bytes()).collect();
    let inos: Vec<u64> = names
        .iter()
        .map(|name| {
            fs.mknod(ROOT_INO, name, Kind::File, 0o644, 0, b"", ROOT)
                .unwrap()
                .ino
        })
        .collect();
    // Data that does not compress: payloads are compressed before they are sealed.
    let noise = |seed: u64| -> Vec<u8> {
        let mut x = seed | 1;
        (0..256 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let write_all = |round: u64| {
        for (i, ino) in inos.iter().enumerate() {
            fs.write(*ino, 0, &noise(round * 100 + i as u64)).unwrap();
            fs.fsync(*ino).unwrap();
        }
    };
    write_all(0);
    // 4 MiB written once: nothing in the log is garbage, nothing to copy.
    assert!(!fs.maybe_compact().unwrap());
    // Rewritten twice: two thirds of the log are old versions.
    write_all(1);
    write_all(2);
    assert!(fs.maybe_compact().unwrap());
    let full = fs.chain().stats().bytes;
    for name in &names {
        fs.unlink(ROOT_INO, name).unwrap();
    }
    let last = fs
        .mknod(ROOT_INO, b"last", Kind::File, 0o644, 0, b"", ROOT)
        .unwrap();
    fs.write(last.ino, 0, b"kept").unwrap();
    fs.fsync(last.ino).unwrap();
    // Everything deleted: compacted although far less was written since the last compaction
    // than it left (that size was the base before, and the space never came back).
    assert!(fs.maybe_compact().unwrap());
    let after = fs.chain().stats();
    assert!(after.bytes < full / 16, "{full} -> {after:?}");
    assert!(!fs.maybe_compact().unwrap(), "nothing written since");
    assert_eq!(fs.read(last.ino, 0, 10).unwrap(), b"kept");
}

#[test]
fn the_inode_table_keeps_within_its_bound_and_drops_only_what_the_chain_holds() {
    const CAP: usize = 16;
    let (mem, keys, fs) = mem_fs(FsOptions {
        node_cache: CAP,
        ..small_blocks()
    });
    let content = |d: usize, f: usize| format!("file {f} of dir {d}").into_bytes();
    let make = |dir: u64, name: String, kind: Kind| {
        fs.mknod(dir, name.as_bytes(), kind, 0o755, 0, b"", ROOT)
            .unwrap()
            .ino
    };
    let mut files = Vec::new();
    for d in 0..10 {
        let dir = make(ROOT_INO, format!("d{d}"), Kind::Dir);
        for f in 0..20 {
            let ino = make(dir, format!("f{f}"), Kind::File);
            // Shorter than a flush: the data stays buffered in the inode.
            fs.write(ino, 0, &content(d, f)).unwrap();
            files.push((dir, d, f, ino));
        }
    }
    // 210 inodes, all holding buffered data: none may go.
    assert!(fs.cached_inodes() >= 200, "{}", fs.cached_inodes());
    for &(dir, d, f, ino) in &files {
        assert_eq!(fs.lookup(dir, format!("f{f}").as_bytes()).unwrap().ino, ino);
        assert_eq!(fs.read(ino, 0, 100).unwrap(), content(d, f));
    }
    fs.sync_all().unwrap();
    // Committed, they are dropped and loaded again as they are used; the table stays within
    // its bound (plus the inodes one call loads).
    for _ in 0..2 {
        for &(dir, d, f, ino) in &files {
            let a = fs.lookup(dir, format!("f{f}").as_bytes()).unwrap();
            assert_eq!((a.ino, a.size), (ino, content(d, f).len() as u64));
            assert_eq!(fs.read(ino, 0, 100).unwrap(), content(d, f));
            assert!(fs.cached_inodes() <= CAP + 3, "{}", fs.cached_inodes());
        }
    }
    // A change made after an inode was dropped and loaded again lasts.
    let (dir, _, _, ino) = files[7];
    fs.write(ino, 0, b"rewritten").unwrap();
    fs.rename(dir, b"f7", ROOT_INO, b"moved", RenameMode::Replace)
        .unwrap();
    fs.sync_all().unwrap();
    drop(fs);
    let fs = open(&mem, &keys, small_blocks());
    let a = fs.lookup(ROOT_INO, b"moved").unwrap();
    assert_eq!(a.ino, ino);
    assert_eq!(&fs.read(ino, 0, 9).unwrap(), b"rewritten");
    assert!(matches!(fs.lookup(dir, b"f7"), Err(FsError::NotFound)));
    assert!(fs.fsck().unwrap().problems.is_empty());
}
