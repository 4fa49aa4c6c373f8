//! Commit latency and throughput against a running chain-server cluster: `--writers` clients
//! commit signed transactions of `--size` sealed bytes back to back for `--seconds`; prints
//! throughput and latency percentiles as `metric value unit` lines.

use anyhow::Result;
use ate::remote::{RemoteClient, RemoteOptions};
use ate::{ChainId, DataKey, Op, RecordKey, SigningKey, Transaction, WriteAuthority};
use clap::Parser;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Commit latency and throughput of a chain-server cluster")]
struct Args {
    /// API addresses, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// The cluster CA (PEM); without it, plaintext.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Sealed payload bytes per transaction.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// How long to commit.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    // Plaintext unless a CA is given.
    let client = Arc::new(RemoteClient::new(RemoteOptions::from_flags(
        args.server.clone(),
        args.ca.as_deref(),
        args.ca.is_none(),
    )?)?);
    let owner = SigningKey::generate();
    let chain = ChainId::random();
    rt.block_on(client.create(chain, u64::MAX, ate::remote::genesis(chain, &owner)))?;
    let data = DataKey::generate();
    let payload = vec![0x5a; args.size];
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.writers)
        .map(|w| {
            let (client, owner, data, payload) =
                (client.clone(), owner.clone(), data.clone(), payload.clone());
            rt.spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < until {
                    let mut tx = Transaction::new(chain, owner.public());
                    let mut k = [0u8; 16];
                    k[..8].copy_from_slice(&(w as u64).to_le_bytes());
                    k[8..].copy_from_slice(&i.to_le_bytes());
                    tx.ops.push(Op::put(
                        &chain,
                        RecordKey(k),
                        None,
                        WriteAuthority::Inherit,
                        Some(&data),
                        &payload,
                    ));
                    let bytes = tx.sign(&owner).encode();
                    let t = Instant::now();
                    client.commit(chain, bytes).await?;
                    lat.push(t.elapsed());
                    i += 1;
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(rt.block_on(t)??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!("commits {} count", all.len());
    println!("throughput {:.0} tx/s", all.len() as f64 / elapsed);
    println!("latency_p50 {:.2} ms", pct(0.50));
    println!("latency_p99 {:.2} ms", pct(0.99));
    println!(
        "bandwidth {:.1} MiB/s",
        (all.len() * args.size) as f64 / elapsed / (1 << 20) as f64
    );
    Ok(())
}
