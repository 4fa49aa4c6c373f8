//! The chain-server binary: `run` one replica, make dev `certs`, or start a local `dev-cluster`.

use anyhow::{bail, Context, Result};
use chain_server::api::Api;
use chain_server::metrics::Metrics;
use chain_server::node::{Node, NodeConfig, PeerAddr};
use chain_server::pb::chain::chains_server::ChainsServer;
use chain_server::pb::raft::raft_server::RaftServer;
use chain_server::raft_service::RaftService;
use chain_server::tls::Tls;
use chain_server::MAX_MESSAGE;
use clap::{Parser, Subcommand};

/// mimalloc keeps freed memory for reuse: with glibc's allocator every multi-MiB replication
/// buffer was fresh mmapped memory, and zeroing those pages took a third of the leader's CPU
/// (perf, 512 MiB written through a mount).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "chain-server",
    version,
    about = "Hosts replicated partitions of ate chains"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one replica. Every replica gets the same --peer list and --partitions.
    Run(RunArgs),
    /// Write a cluster CA and a server certificate (for development and tests).
    Certs {
        /// Directory for ca.pem, ca.key, server.pem, server.key.
        #[arg(long)]
        out: PathBuf,
        /// Extra names for the certificate (it always names atefs-chain-server).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Run a local cluster of three replicas on 127.0.0.1 for development (Ctrl-C stops it).
    DevCluster {
        /// Directory for the replicas' data and certificates.
        #[arg(long, default_value = "/tmp/atefs-dev-cluster")]
        dir: PathBuf,
        /// First port; replica N uses base+10N (API), +1 (Raft), +2 (metrics).
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
        /// Partitions.
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// Remove a replica that is gone for good from every partition (run before lowering a
    /// StatefulSet's replica count: docs/operations.md). Its leaders remove it once they have
    /// not heard from it for --forget-after-secs; this waits for that.
    Forget(ForgetArgs),
}

#[derive(clap::Args, Clone)]
struct ForgetArgs {
    /// The replica's id (a StatefulSet's `NAME-3` is replica 4).
    id: u64,
    /// Raft addresses (HOST:PORT) of the replicas that stay (comma-separated or repeated).
    #[arg(long = "server", required = true, value_delimiter = ',')]
    servers: Vec<String>,
    /// Directory holding ca.pem, server.pem and server.key (the replicas' own).
    #[arg(long, conflicts_with = "insecure_plaintext")]
    tls_dir: Option<PathBuf>,
    /// The replicas serve without TLS.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// This replica's id.
    #[arg(long, required_unless_present = "id_from_hostname")]
    id: Option<u64>,
    /// Take the id from the host name's ordinal: `NAME-0` is replica 1, `NAME-1` replica 2, ...
    /// (a StatefulSet's pods).
    #[arg(long, conflicts_with = "id")]
    id_from_hostname: bool,
    /// A replica as ID=RAFT_ADDR,API_ADDR (repeat for each, this one included).
    #[arg(long = "peer", required = true)]
    peers: Vec<String>,
    /// Where this replica keeps its partitions.
    #[arg(long)]
    data: PathBuf,
    /// Partitions in the cluster (never change it for an existing cluster).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Directory holding ca.pem, server.pem and server.key.
    #[arg(long, conflicts_with = "insecure_plaintext")]
    tls_dir: Option<PathBuf>,
    /// Serve without TLS (tests and debugging only).
    #[arg(long)]
    insecure_plaintext: bool,
    /// Address for /metrics and /health.
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics: String,
    /// Initialise the partitions with all peers (the first start of a new cluster, on one
    /// replica).
    #[arg(long)]
    bootstrap: bool,
    /// Bootstrap if this is the lowest-numbered replica and its --data directory does not
    /// exist yet: the same arguments on every replica (a StatefulSet) start a new cluster once.
    #[arg(long, conflicts_with = "bootstrap")]
    bootstrap_first: bool,
    /// Entries between snapshots.
    #[arg(long, default_value_t = 20_000)]
    snapshot_every: u64,
    /// Old versions and deleted records allowed beside a partition's data before a snapshot
    /// drops them, and bytes of log a snapshot covers that are kept for lagging mounts: a
    /// partition's disk stays within about twice its data plus twice this.
    #[arg(long, default_value_t = 256 << 20)]
    snapshot_log_bytes: u64,
    /// Free disk space a leader keeps: below it only commits that free space (deletions) are
    /// taken, below half of it none (RESOURCE_EXHAUSTED; ENOSPC in a mount), so that no
    /// replica's disk fills (a full disk stops its Raft core). 0: no reserve.
    #[arg(long, default_value_t = 1 << 30)]
    disk_reserve_bytes: u64,
    /// Raft log segment size in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    segment_bytes: u64,
    /// Raft heartbeat in milliseconds (also the time one replication request may take;
    /// elections time out after 3 to 6 heartbeats).
    #[arg(long, default_value_t = 250)]
    heartbeat_ms: u64,
    /// Source address for connections to peers.
    #[arg(long)]
    source_ip: Option<std::net::IpAddr>,
    /// A member that some replica's --peer list no longer names (a StatefulSet scaled down) is
    /// removed from the partitions once their leader has not heard from it for this long.
    #[arg(long, default_value_t = 10)]
    forget_after_secs: u64,
}

fn parse_peer(s: &str) -> Result<(u64, PeerAddr)> {
    let (id, rest) = s
        .split_once('=')
        .with_context(|| format!("--peer {s}: expected ID=RAFT_ADDR,API_ADDR"))?;
    let (raft, api) = rest
        .split_once(',')
        .with_context(|| format!("--peer {s}: expected ID=RAFT_ADDR,API_ADDR"))?;
    Ok((
        id.parse().with_context(|| format!("--peer {s}: bad id"))?,
        PeerAddr {
            raft: raft.into(),
            api: api.into(),
        },
    ))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (the terminal that started us is gone) must not end
        // the process: tracing-subscriber reports its write errors with eprintln!, which
        // panics when stderr itself is what failed.
        .log_internal_errors(false)
        .init();
    match Cli::parse().cmd {
        Cmd::Run(args) => tokio::runtime::Runtime::new()?.block_on(run(args)),
        Cmd::Forget(args) => tokio::runtime::Runtime::new()?.block_on(forget(args)),
        Cmd::Certs { out, names } => {
            chain_server::tls::generate(&out, &names)?;
            println!(
                "wrote {}/{{ca.pem,ca.key,server.pem,server.key}}",
                out.display()
            );
            Ok(())
        }
        Cmd::DevCluster {
            dir,
            base_port,
            partitions,
        } => dev_cluster(&dir, base_port, partitions),
    }
}

/// The replica id of a StatefulSet pod named `NAME-N`: N + 1.
fn id_from_hostname(host: &str) -> Result<u64> {
    let ordinal = host
        .trim()
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .with_context(|| format!("host name {host:?} does not end in -ORDINAL"))?;
    Ok(ordinal + 1)
}

/// Where to listen for `addr` (host:port): the address itself when it is one, else every
/// interface on its port (a peer named by DNS, as in a StatefulSet).
fn listen_addr(addr: &str) -> Result<std::net::SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let port = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .with_context(|| format!("address {addr}: expected HOST:PORT"))?;
    Ok(std::net::SocketAddr::from(([0, 0, 0, 0], port)))
}

fn load_tls(dir: &Option<PathBuf>, plaintext: bool) -> Result<Tls> {
    Ok(match (dir, plaintext) {
        (Some(d), _) => Tls::load(d)?,
        (None, true) => Tls::plaintext(),
        (None, false) => {
            bail!("give --tls-dir DIR (see `chain-server certs`), or --insecure-plaintext")
        }
    })
}

async fn forget(args: ForgetArgs) -> Result<()> {
    use chain_server::membership::{forget_everywhere, Forgotten};
    let tls = Arc::new(load_tls(&args.tls_dir, args.insecure_plaintext)?);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout_secs);
    let mut waiting = std::collections::HashSet::new();
    let partitions = forget_everywhere(tls, &args.servers, args.id, deadline, |step| match step {
        Forgotten::Gone(p) => println!("partition {p}: replica {} is not a member", args.id),
        Forgotten::Heard(p) => {
            if waiting.insert(*p) {
                println!(
                    "partition {p}: replica {} was heard from lately; waiting until its leader has not heard from it for --forget-after-secs",
                    args.id
                );
            }
        }
    })
    .await
    .with_context(|| format!("forgetting replica {}", args.id))?;
    println!(
        "replica {} is a member of none of the {partitions} partitions",
        args.id
    );
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    let peers: BTreeMap<u64, PeerAddr> = args
        .peers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<Result<_>>()?;
    let id = match args.id {
        Some(id) => id,
        None => {
            let host = std::env::var("HOSTNAME")
                .or_else(|_| std::fs::read_to_string("/etc/hostname"))
                .context("--id-from-hostname: no HOSTNAME and no /etc/hostname")?;
            id_from_hostname(&host)?
        }
    };
    let me = peers
        .get(&id)
        .with_context(|| format!("--id {id} is not among the --peer entries"))?
        .clone();
    let bootstrap = args.bootstrap
        || (args.bootstrap_first && peers.keys().next() == Some(&id) && !args.data.exists());
    let tls = Arc::new(load_tls(&args.tls_dir, args.insecure_plaintext)?);
    let config = NodeConfig {
        id,
        peers,
        partitions: args.partitions,
        data: args.data.clone(),
        segment_bytes: args.segment_bytes,
        snapshot_every: args.snapshot_every,
        snapshot_log_bytes: args.snapshot_log_bytes,
        heartbeat_ms: args.heartbeat_ms,
        source_ip: args.source_ip,
        disk_reserve: args.disk_reserve_bytes,
        forget_after: std::time::Duration::from_secs(args.forget_after_secs),
    };
    let node = Node::start(config, tls.clone()).await?;
    let metrics = Arc::new(Metrics::default());
    let raft_addr = listen_addr(&me.raft)?;
    let api_addr = listen_addr(&me.api)?;
    let metrics_listener = tokio::net::TcpListener::bind(&args.metrics)
        .await
        .with_context(|| format!("binding {}", args.metrics))?;
    tokio::spawn(chain_server::metrics::serve(
        metrics_listener,
        node.clone(),
        metrics.clone(),
    ));

    let mut raft_server = tonic::transport::Server::builder();
    if let Some(t) = tls.raft_server() {
        raft_server = raft_server.tls_config(t)?;
    }
    let raft_svc = RaftServer::new(RaftService::new(node.clone()))
        .max_decoding_message_size(MAX_MESSAGE * 4)
        .max_encoding_message_size(MAX_MESSAGE * 4);
    let raft_task = tokio::spawn(raft_server.add_service(raft_svc).serve(raft_addr));

    // A subscriber that went silent (its host froze or was cut off) is found out within two
    // intervals, and its stream and the task feeding it end.
    let mut api_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(ate::remote::KEEPALIVE * 2))
        .http2_keepalive_timeout(Some(ate::remote::KEEPALIVE * 2));
    if let Some(t) = tls.api_server() {
        api_server = api_server.tls_config(t)?;
    }
    let api_svc = ChainsServer::new(Api::new(node.clone(), metrics))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let api_task = tokio::spawn(api_server.add_service(api_svc).serve(api_addr));

    if bootstrap {
        node.bootstrap().await?;
    }
    tokio::spawn(chain_server::membership::keep(node.clone()));
    tracing::info!(id, raft = %me.raft, api = %me.api, metrics = %args.metrics,
        tls = tls.enabled(), "serving");
    // The readiness line scripts wait for.
    println!("serving api={} raft={}", me.api, me.raft);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = raft_task => bail!("raft listener stopped: {r:?}"),
        r = api_task => bail!("api listener stopped: {r:?}"),
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    node.shutdown().await;
    Ok(())
}

fn dev_cluster(dir: &std::path::Path, base: u16, partitions: u32) -> Result<()> {
    let certs = dir.join("certs");
    if !certs.join("server.pem").exists() {
        chain_server::tls::generate(&certs, &[])?;
    }
    // Empty counts as new: the replicas' directories may be mount points made beforehand.
    let fresh = std::fs::read_dir(dir.join("node-1")).map_or(true, |mut d| d.next().is_none());
    let peers: Vec<String> = (1..=3u16)
        .map(|i| {
            format!(
                "{i}=127.0.0.1:{},127.0.0.1:{}",
                base + 10 * i + 1,
                base + 10 * i
            )
        })
        .collect();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 1..=3u16 {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("run")
            .args(["--id", &i.to_string()])
            .arg("--data")
            .arg(dir.join(format!("node-{i}")))
            .args(["--partitions", &partitions.to_string()])
            .arg("--tls-dir")
            .arg(&certs)
            .args(["--metrics", &format!("127.0.0.1:{}", base + 10 * i + 2)]);
        for p in &peers {
            cmd.args(["--peer", p]);
        }
        if i == 1 && fresh {
            cmd.arg("--bootstrap");
        }
        children.push(cmd.spawn().context("starting a replica")?);
    }
    println!(
        "dev cluster: API at https://127.0.0.1:{} (and :{}, :{}); CA {}; Ctrl-C stops it",
        base + 10,
        base + 20,
        base + 30,
        certs.join("ca.pem").display()
    );
    // Stop the replicas with us (SIGINT or SIGTERM), or when one of them dies.
    tokio::runtime::Runtime::new()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    for c in &mut children {
        let _ = c.kill();
    }
    for mut c in children {
        let _ = c.wait();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_pod_ordinal() {
        assert_eq!(id_from_hostname("atefs-chain-server-0\n").ok(), Some(1));
        assert_eq!(id_from_hostname("a-b-12").ok(), Some(13));
        assert!(id_from_hostname("chain-server").is_err());
        assert!(id_from_hostname("nohyphen").is_err());
    }

    #[test]
    fn host_names_listen_on_every_interface() {
        assert_eq!(
            listen_addr("127.0.0.1:7000").ok(),
            Some(([127, 0, 0, 1], 7000).into())
        );
        assert_eq!(
            listen_addr("atefs-chain-server-0.atefs-chain-server:7001").ok(),
            Some(([0, 0, 0, 0], 7001).into())
        );
        assert!(listen_addr("host-without-port").is_err());
    }
}
