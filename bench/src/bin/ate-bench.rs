//! ate benchmarks and demo.
//!
//! `ate-bench demo` creates a chain, writes and reads it back, reopens it and prints its stats.
//! `ate-bench commit` measures group-commit throughput with fsync from concurrent writers.
//! `ate-bench crypto` measures seal/open/sign/verify costs on one core.

use anyhow::{Context, Result};
use ate::storage::{FileStorage, Storage};
use ate::{
    Chain, ChainId, ChainOptions, DataKey, Op, RecordKey, RootAuthority, SigningKey, Transaction,
    WriteAuthority,
};
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "ate demo and benchmarks", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Local,
    Remote,
    Presigned,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a chain in DIR (a temp dir by default), write, read back, reopen, print stats.
    Demo {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Commit throughput with fdatasync per group commit.
    Commit {
        /// Concurrent writer threads.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Payload bytes per transaction.
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// local: each writer signs inside `Chain::sign_and_commit` (the embedded file system's
        /// path); remote: writers sign, the chain verifies (a server's path); presigned: signed
        /// before the clock starts, the chain verifies (the commit path alone).
        #[arg(long, value_enum, default_value_t = Mode::Local)]
        mode: Mode,
        /// Directory for the chain (default: a temp dir in the current directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Seal/open/sign/verify costs on one core.
    Crypto {
        /// Payload bytes.
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        /// Iterations.
        #[arg(long, default_value_t = 200)]
        iters: usize,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match Cli::parse().cmd {
        Cmd::Demo { dir } => demo(dir),
        Cmd::Commit {
            writers,
            size,
            seconds,
            mode,
            dir,
        } => commit(writers, size, seconds, mode, dir),
        Cmd::Crypto { size, iters } => crypto(size, iters),
    }
}

fn tempdir(dir: Option<std::path::PathBuf>) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let t = tempfile::Builder::new()
        .prefix("ate-bench")
        .tempdir_in(".")?;
    let p = dir.unwrap_or_else(|| t.path().to_path_buf());
    Ok((t, p))
}

struct Setup {
    chain: Chain,
    id: ChainId,
    owner: SigningKey,
    data: DataKey,
}

fn setup(path: &std::path::Path) -> Result<Setup> {
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(path)?);
    let id = ChainId::random();
    let (chain, _) = Chain::open(storage, Some(id), ChainOptions::default(), |_, _| {})?;
    let owner = SigningKey::generate();
    let mut g = Transaction::new(id, owner.public());
    g.ops
        .push(Op::SetRoot(RootAuthority::single_owner(owner.public())));
    chain.commit(g.sign(&owner))?;
    Ok(Setup {
        chain,
        id,
        owner,
        data: DataKey::generate(),
    })
}

fn put_tx(s: &Setup, key: RecordKey, payload: &[u8]) -> Transaction {
    let mut tx = Transaction::new(s.id, s.owner.public());
    tx.ops.push(Op::put(
        &s.id,
        key,
        None,
        WriteAuthority::Inherit,
        Some(&s.data),
        payload,
    ));
    tx.sign(&s.owner)
}

fn demo(dir: Option<std::path::PathBuf>) -> Result<()> {
    let (_t, path) = tempdir(dir)?;
    let s = setup(&path)?;
    println!("created chain {} in {}", s.id, path.display());
    for i in 0..100u128 {
        s.chain.commit(put_tx(
            &s,
            RecordKey::from_u128(i),
            format!("record {i}").as_bytes(),
        ))?;
    }
    let (_, plain) = s
        .chain
        .read_plain(&RecordKey::from_u128(42), &s.data)?
        .context("record 42 missing")?;
    println!(
        "committed 100 signed, encrypted transactions; record 42 reads {:?}",
        String::from_utf8_lossy(&plain)
    );
    let id = s.id;
    drop(s.chain);
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(&path)?);
    let (chain, report) = Chain::open(storage, Some(id), ChainOptions::default(), |_, _| {})?;
    let st = chain.stats();
    println!(
        "reopened: replayed {} entries; {} records, last index {}, {} bytes on disk",
        report.entries, st.records, st.last_index, st.bytes
    );
    let snap = chain.compact()?;
    println!(
        "compacted into a snapshot at index {snap}: {} bytes on disk",
        chain.stats().bytes
    );
    Ok(())
}

fn commit(
    writers: usize,
    size: usize,
    seconds: f64,
    mode: Mode,
    dir: Option<std::path::PathBuf>,
) -> Result<()> {
    let presigned = mode == Mode::Presigned;
    let (_t, path) = tempdir(dir)?;
    let s = Arc::new(setup(&path)?);
    let payload = vec![0x5au8; size];
    // Presigned mode prepares enough transactions per writer for the run.
    let per_writer = if presigned {
        ((60_000.0 * seconds) as usize / writers * 4096 / size.max(4096)).max(8)
    } else {
        0
    };
    let pre: Vec<Vec<Transaction>> = (0..writers)
        .map(|w| {
            (0..per_writer)
                .map(|i| {
                    put_tx(
                        &s,
                        RecordKey::from_u128(((w as u128) << 64) | i as u128),
                        &payload,
                    )
                })
                .collect()
        })
        .collect();
    eprintln!("prepared; measuring");
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = pre
        .into_iter()
        .enumerate()
        .map(|(w, mut txs)| {
            let s = s.clone();
            let payload = payload.clone();
            std::thread::spawn(move || -> Result<(u64, Vec<Duration>)> {
                let mut n = 0u64;
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let key = RecordKey::from_u128(((w as u128) << 64) | n as u128);
                    let t0 = Instant::now();
                    match mode {
                        Mode::Presigned => match txs.pop() {
                            Some(t) => s.chain.commit(t)?,
                            None => break,
                        },
                        Mode::Remote => s.chain.commit(put_tx(&s, key, &payload))?,
                        Mode::Local => {
                            let mut tx = Transaction::new(s.id, s.owner.public());
                            let data = Some(&s.data);
                            tx.ops.push(Op::put(
                                &s.id,
                                key,
                                None,
                                WriteAuthority::Inherit,
                                data,
                                &payload,
                            ));
                            s.chain.sign_and_commit(tx, &s.owner)?
                        }
                    };
                    lat.push(t0.elapsed());
                    n += 1;
                }
                Ok((n, lat))
            })
        })
        .collect();
    let mut total = 0u64;
    let mut lats = Vec::new();
    for h in handles {
        let (n, l) = h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        total += n;
        lats.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    lats.sort();
    let pct = |p: f64| {
        lats.get(((lats.len() as f64 * p) as usize).min(lats.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "commit writers={writers} size={size} mode={mode:?}: {total} tx in {secs:.2}s = {:.0} tx/s, {:.1} MiB/s payload; latency p50 {:.2} ms p99 {:.2} ms; {:.0} us CPU per tx ({:.2} cores busy)",
        total as f64 / secs,
        total as f64 * size as f64 / secs / 1048576.0,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        cpu * 1e6 / total.max(1) as f64,
        cpu / secs,
    );
    Ok(())
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which ends with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn crypto(size: usize, iters: usize) -> Result<()> {
    let id = ChainId::random();
    let key = SigningKey::generate();
    let data = DataKey::generate();
    let plain = vec![7u8; size];
    let gib = |n: usize, d: Duration| (n * size) as f64 / d.as_secs_f64() / (1u64 << 30) as f64;

    let make = |i: usize| {
        let mut tx = Transaction::new(id, key.public());
        tx.ops.push(Op::put(
            &id,
            RecordKey::from_u128(i as u128),
            None,
            WriteAuthority::Inherit,
            Some(&data),
            &plain,
        ));
        tx.sign(&key)
    };
    // Steady state: each transaction is dropped before the next is built, as in a writer that
    // commits as it goes (keeping them all would time the kernel zeroing fresh pages instead).
    for i in 0..iters.min(8) {
        drop(make(i));
    }
    let t = Instant::now();
    for i in 0..iters {
        std::hint::black_box(make(i));
    }
    let seal_sign = t.elapsed();
    println!(
        "seal+sign  {size} B: {:>9.1} us/op  {:.2} GiB/s",
        seal_sign.as_secs_f64() * 1e6 / iters as f64,
        gib(iters, seal_sign)
    );
    let txs: Vec<Transaction> = (0..iters.min(64)).map(make).collect();
    let iters = txs.len();

    let t = Instant::now();
    for tx in &txs {
        tx.verify_signature().context("verify")?;
    }
    let verify = t.elapsed();
    println!(
        "hash+verify {size} B: {:>8.1} us/op  {:.2} GiB/s",
        verify.as_secs_f64() * 1e6 / iters as f64,
        gib(iters, verify)
    );

    let t = Instant::now();
    for tx in &txs {
        if let Op::Put {
            header, payload, ..
        } = &tx.ops[0]
        {
            header.open(&id, &data, payload.clone()).context("open")?;
        }
    }
    let open = t.elapsed();
    println!(
        "open       {size} B: {:>9.1} us/op  {:.2} GiB/s",
        open.as_secs_f64() * 1e6 / iters as f64,
        gib(iters, open)
    );

    let digest = [1u8; 32];
    let n = 20_000;
    let t = Instant::now();
    let mut sig = [0u8; 64];
    for _ in 0..n {
        sig = key.sign(&digest);
    }
    let sign = t.elapsed();
    let t = Instant::now();
    for _ in 0..n {
        key.public().verify(&digest, &sig).context("verify")?;
    }
    let ver = t.elapsed();
    println!(
        "ed25519 sign {:.1} us, verify {:.1} us (32-byte digest)",
        sign.as_secs_f64() * 1e6 / n as f64,
        ver.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}
