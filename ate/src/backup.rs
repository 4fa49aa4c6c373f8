//! A volume's backup: its live records as of one chain index, still sealed, in one file signed
//! by an owner key (docs/format.md, "Backup files").
//!
//! A backup is as safe to keep as the chain servers' disks are: payloads stay sealed under the
//! volume's data key, and the file can be stored anywhere (object storage, another site)
//! without the store being able to read it or change it unnoticed. Restoring makes the same
//! chain again (same id, same keys), so the volume's key file or Secret opens the restored
//! volume as it opened the lost one. Payloads are sealed with the chain id and the record's
//! header in their associated data, not its version, so they go back verbatim.
//!
//! The signature covers the whole file. A restore verifies it before it commits anything, and
//! hashes the file again as it reads the records, so a file changed between the two reads
//! fails the restore instead of passing unnoticed.

use crate::authority::RootAuthority;
use crate::chain::{ChainError, Frozen};
use crate::codec::{Reader, Writer};
use crate::copy::{BATCH_BYTES, BATCH_RECORDS};
use crate::ids::ChainId;
use crate::keyfile::KeyFile;
use crate::tx::{
    decode_header, decode_root_authority, decode_write_authority, encode_header,
    encode_root_authority, encode_write_authority, Op, Transaction, TxEncoder, MAX_TX_BYTES,
};
use bytes::Bytes;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// The first bytes of a backup file (format 1).
pub const MAGIC: &[u8; 8] = b"ATEBKUP1";
/// BLAKE3 derive-key context of the digest the signature is over.
const CONTEXT: &str = "atefs backup 2026-12 signature";
/// Frame tags.
const RECORD: u8 = 1;
const END: u8 = 0;
/// Bytes of the trailer: the signer's public key and its signature.
const TRAILER: usize = 32 + 64;

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file could not be read or written.
    #[error("backup file: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start as a backup does.
    #[error("not an atefs backup file")]
    NotABackup,
    /// The file ends early or holds something a backup cannot.
    #[error("the backup file is damaged: {0}")]
    Damaged(String),
    /// The signature does not verify with the keys' owner key.
    #[error("the backup's signature does not verify with these keys' owner key: the file was changed, or was taken with other keys (a backup from before a rekey needs the keys of then)")]
    BadSignature,
    /// The file changed between its verification and the restore's reading of it.
    #[error("the backup file changed while it was being restored")]
    Changed,
    /// The backup is of another chain than the keys'.
    #[error("the backup is of chain {backup}, the keys are of chain {keys}")]
    OtherChain {
        /// The backup's chain.
        backup: ChainId,
        /// The keys' chain.
        keys: ChainId,
    },
    /// The keys' owner key is not an owner of the backed-up chain.
    #[error("these keys are not an owner of chain {0}")]
    NotAnOwner(ChainId),
    /// The chain has no root authority (no genesis yet).
    #[error("chain {0} has no root authority")]
    NoRoot(ChainId),
    /// Reading a record from the chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

fn damaged(e: impl std::fmt::Display) -> BackupError {
    BackupError::Damaged(e.to_string())
}

/// What a backup holds, from its head and end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    /// The chain backed up.
    pub chain: ChainId,
    /// The chain index the records are as of.
    pub index: u64,
    /// The chain's quota then.
    pub quota: u64,
    /// The root authority then.
    pub root: RootAuthority,
    /// Records.
    pub records: u64,
    /// Sealed payload bytes.
    pub bytes: u64,
}

/// Hashes what passes through to `inner`.
struct Hashing<T> {
    inner: T,
    hash: blake3::Hasher,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hash: blake3::Hasher::new_derive_key(CONTEXT),
        }
    }

    fn digest(&self) -> [u8; 32] {
        *self.hash.finalize().as_bytes()
    }
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }
}

impl<R: Read> Hashing<R> {
    fn get(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => damaged("it ends early"),
            _ => BackupError::Io(e),
        })?;
        self.hash.update(buf);
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, BackupError> {
        let mut b = [0; 1];
        self.get(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> Result<u32, BackupError> {
        let mut b = [0; 4];
        self.get(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, BackupError> {
        let mut b = [0; 8];
        self.get(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A u32 length, then that many bytes (at most `limit`) into `buf`.
    fn frame(&mut self, buf: &mut Vec<u8>, limit: usize) -> Result<(), BackupError> {
        let len = self.u32()? as usize;
        if len > limit {
            return Err(damaged(format!("a frame of {len} bytes")));
        }
        buf.resize(len, 0);
        self.get(buf)
    }
}

/// Writes a backup of `frozen` (the chain of `keys`, whose quota is `quota`) to `out`,
/// signed by `keys.owner`; `progress` is told of records written and in all. Records whose
/// parent is gone are left out, as a copy leaves them ([`crate::copy`]).
pub fn write_backup<W: Write>(
    frozen: &Frozen<'_>,
    keys: &KeyFile,
    quota: u64,
    out: W,
    mut progress: impl FnMut(usize, usize),
) -> Result<BackupSummary, BackupError> {
    let root = frozen.root.clone().ok_or(BackupError::NoRoot(keys.chain))?;
    if !root.is_owner(&keys.owner.public().id()) {
        return Err(BackupError::NotAnOwner(keys.chain));
    }
    let (order, _) = crate::copy::parents_first(&frozen.records);
    let mut w = Hashing::new(BufWriter::with_capacity(1 << 20, out));
    let mut head = Writer::with_capacity(256);
    head.raw(MAGIC);
    head.raw(&keys.chain.0);
    head.u64(frozen.index);
    head.u64(quota);
    let mut encoded_root = Writer::with_capacity(128);
    encode_root_authority(&root, &mut encoded_root);
    head.bytes(&encoded_root.into_vec());
    w.put(&head.into_vec())?;
    let mut payload = Vec::new();
    let mut bytes = 0u64;
    for (done, &i) in order.iter().enumerate() {
        let r = &frozen.records[i];
        let len = frozen.read_sealed_into(r, &mut payload)?;
        let mut meta = Writer::with_capacity(256);
        encode_header(&r.header, &mut meta);
        encode_write_authority(&r.write, &mut meta);
        let meta = meta.into_vec();
        let mut frame = Writer::with_capacity(16);
        frame.u8(RECORD);
        frame.bytes(&meta);
        frame.u32(len as u32);
        w.put(&frame.into_vec())?;
        w.put(&payload[..len])?;
        bytes += len as u64;
        progress(done + 1, order.len());
    }
    let mut end = Writer::with_capacity(17);
    end.u8(END);
    end.u64(order.len() as u64);
    end.u64(bytes);
    w.put(&end.into_vec())?;
    let signature = keys.owner.sign(&w.digest());
    let mut inner = w.inner;
    inner.write_all(&keys.owner.public().0)?;
    inner.write_all(&signature)?;
    inner.flush()?;
    Ok(BackupSummary {
        chain: keys.chain,
        index: frozen.index,
        quota,
        root,
        records: order.len() as u64,
        bytes,
    })
}

/// One record of a backup.
struct Record {
    op: Op,
    sealed: usize,
}

/// Reads a backup file from its start: the head, then records until the end frame.
struct Scan {
    r: Hashing<BufReader<std::fs::File>>,
    head: (ChainId, u64, u64, RootAuthority),
    buf: Vec<u8>,
    done: bool,
}

impl Scan {
    fn open(path: &Path) -> Result<Self, BackupError> {
        let file = std::fs::File::open(path)?;
        let mut r = Hashing::new(BufReader::with_capacity(1 << 20, file));
        let mut magic = [0; 8];
        r.get(&mut magic).map_err(|_| BackupError::NotABackup)?;
        if &magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let mut chain = [0; 16];
        r.get(&mut chain)?;
        let index = r.u64()?;
        let quota = r.u64()?;
        let mut buf = Vec::new();
        r.frame(&mut buf, 1 << 20)?;
        let mut rd = Reader::new(&buf);
        let root = decode_root_authority(&mut rd).map_err(damaged)?;
        rd.finish().map_err(damaged)?;
        Ok(Self {
            r,
            head: (ChainId(chain), index, quota, root),
            buf,
            done: false,
        })
    }

    /// The next record, None at the end frame (whose counts are then checked).
    fn next_record(&mut self, seen: (u64, u64)) -> Result<Option<Record>, BackupError> {
        if self.done {
            return Ok(None);
        }
        match self.r.u8()? {
            RECORD => {}
            END => {
                self.done = true;
                let (records, bytes) = (self.r.u64()?, self.r.u64()?);
                if (records, bytes) != seen {
                    return Err(damaged(format!(
                        "its end counts {records} records of {bytes} bytes, it holds {} of {}",
                        seen.0, seen.1
                    )));
                }
                return Ok(None);
            }
            t => return Err(damaged(format!("a frame of unknown kind {t}"))),
        }
        self.r.frame(&mut self.buf, 1 << 20)?;
        let mut rd = Reader::new(&self.buf);
        let header = decode_header(&mut rd).map_err(damaged)?;
        let write = decode_write_authority(&mut rd).map_err(damaged)?;
        rd.finish().map_err(damaged)?;
        let mut payload = Vec::new();
        self.r.frame(&mut payload, MAX_TX_BYTES)?;
        let sealed = payload.len();
        Ok(Some(Record {
            op: Op::Put {
                header,
                write,
                payload,
            },
            sealed,
        }))
    }

    /// The trailer, and that nothing follows it.
    fn trailer(mut self) -> Result<Trailer, BackupError> {
        let digest = self.r.digest();
        let mut t = [0; TRAILER];
        self.r
            .inner
            .read_exact(&mut t)
            .map_err(|_| damaged("its signature is missing"))?;
        let mut rest = [0; 1];
        if self.r.inner.read(&mut rest)? != 0 {
            return Err(damaged("bytes follow its signature"));
        }
        let (signer, signature) = t.split_at(32);
        Ok(Trailer {
            signer: signer.try_into().map_err(damaged)?,
            digest,
            signature: signature.try_into().map_err(damaged)?,
        })
    }
}

/// The end of a backup file: who signed it, over what digest (of everything before), and
/// the signature.
struct Trailer {
    signer: [u8; 32],
    digest: [u8; 32],
    signature: [u8; 64],
}

/// A backup file checked against the keys that are to restore it.
#[derive(Debug)]
pub struct VerifiedBackup {
    path: std::path::PathBuf,
    digest: [u8; 32],
    /// What it holds.
    pub summary: BackupSummary,
}

/// Reads the whole backup at `path` and checks it: its signature by `keys.owner`, that it
/// is of `keys.chain`, and that `keys.owner` is an owner in its root authority.
pub fn verify_backup(path: &Path, keys: &KeyFile) -> Result<VerifiedBackup, BackupError> {
    let mut scan = Scan::open(path)?;
    let (chain, index, quota, root) = scan.head.clone();
    let mut seen = (0u64, 0u64);
    while let Some(r) = scan.next_record(seen)? {
        seen = (seen.0 + 1, seen.1 + r.sealed as u64);
    }
    let Trailer {
        signer,
        digest,
        signature,
    } = scan.trailer()?;
    let owner = keys.owner.public();
    if signer != owner.0 || owner.verify(&digest, &signature).is_err() {
        return Err(BackupError::BadSignature);
    }
    if chain != keys.chain {
        return Err(BackupError::OtherChain {
            backup: chain,
            keys: keys.chain,
        });
    }
    if !root.is_owner(&owner.id()) {
        return Err(BackupError::NotAnOwner(chain));
    }
    Ok(VerifiedBackup {
        path: path.to_path_buf(),
        digest,
        summary: BackupSummary {
            chain,
            index,
            quota,
            root,
            records: seen.0,
            bytes: seen.1,
        },
    })
}

/// Produces the transactions that restore a verified backup into its chain, made anew:
/// [`Restorer::genesis`] first, then each of [`Restorer::next_tx`] in order, all signed by
/// the owner key. The last one is given only once the file, read again, hashes as it did
/// when it was verified.
pub struct Restorer<'k> {
    keys: &'k KeyFile,
    backup: &'k VerifiedBackup,
    scan: Option<Scan>,
    seen: (u64, u64),
    pending: Option<Record>,
}

impl std::fmt::Debug for Restorer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restorer")
            .field("records", &self.backup.summary.records)
            .field("done", &self.seen.0)
            .finish()
    }
}

impl<'k> Restorer<'k> {
    /// A restore of `backup` with `keys` (those it was verified with).
    pub fn new(backup: &'k VerifiedBackup, keys: &'k KeyFile) -> Result<Self, BackupError> {
        Ok(Self {
            keys,
            backup,
            scan: Some(Scan::open(&backup.path)?),
            seen: (0, 0),
            pending: None,
        })
    }

    /// The chain's genesis (its `Create` request's): the backed-up root authority.
    pub fn genesis(&self) -> Vec<u8> {
        let mut tx = Transaction::new(self.keys.chain, self.keys.owner.public());
        tx.ops.push(Op::SetRoot(self.backup.summary.root.clone()));
        tx.sign(&self.keys.owner).encode()
    }

    /// Records to restore.
    pub fn records(&self) -> u64 {
        self.backup.summary.records
    }

    /// Records restored so far.
    pub fn done(&self) -> u64 {
        self.seen.0
    }

    /// The next encoded, signed transaction, None when every record is in.
    pub fn next_tx(&mut self) -> Option<Result<Bytes, BackupError>> {
        self.step().transpose()
    }

    fn step(&mut self) -> Result<Option<Bytes>, BackupError> {
        let Some(scan) = self.scan.as_mut() else {
            return Ok(None);
        };
        let mut tx = TxEncoder::new(
            Transaction::new(self.keys.chain, self.keys.owner.public()),
            BATCH_BYTES + (1 << 20),
        );
        let mut bytes = 0;
        while bytes < BATCH_BYTES && tx.ops() < BATCH_RECORDS {
            let record = match self.pending.take() {
                Some(r) => r,
                None => match scan.next_record(self.seen)? {
                    Some(r) => r,
                    None => break,
                },
            };
            if bytes > 0 && bytes + record.sealed > BATCH_BYTES {
                self.pending = Some(record);
                break;
            }
            bytes += record.sealed;
            self.seen = (self.seen.0 + 1, self.seen.1 + record.sealed as u64);
            tx.push(record.op);
        }
        if self.pending.is_none() && scan.done {
            let scan = self.scan.take().ok_or(BackupError::Changed)?;
            if scan.trailer()?.digest != self.backup.digest {
                return Err(BackupError::Changed);
            }
        }
        if tx.ops() == 0 {
            return Ok(None);
        }
        Ok(Some(tx.finish(&self.keys.owner).1))
    }
}
