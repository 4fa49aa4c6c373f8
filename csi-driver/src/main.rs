//! `atefs-csi`: the CSI node plugin of atefs (Identity + Node over a unix socket).

use anyhow::{bail, Context, Result};
use clap::Parser;
use csi_driver::identity::IdentityService;
use csi_driver::metrics::Metrics;
use csi_driver::node::{NodeConfig, NodeService};
use csi_driver::pb;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "atefs-csi", version, about = "The atefs CSI node plugin")]
struct Cli {
    /// The CSI socket kubelet calls (unix:///path or a path).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's id (the Kubernetes node name).
    #[arg(long, env = "NODE_ID")]
    node_id: String,
    /// Where staged volumes keep their key envelope (0600), cache and daemon log.
    #[arg(long, default_value = "/var/lib/atefs-csi")]
    state_dir: PathBuf,
    /// The atefs binary (default: `atefs` beside this one).
    #[arg(long)]
    atefs: Option<PathBuf>,
    /// Chain-server API addresses (host:port, comma-separated), unless a volume names its own.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// CA certificate (PEM) of the chain servers.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Talk to the chain servers without TLS (tests and debugging only).
    #[arg(long, conflicts_with = "ca")]
    insecure_plaintext: bool,
    /// Address of /metrics and /health.
    #[arg(long, default_value = "0.0.0.0:9810")]
    metrics: String,
    /// Seconds a mount may take to come up.
    #[arg(long, default_value_t = 120)]
    mount_timeout: u64,
    /// Seconds an unmounting daemon may take to commit what it buffers.
    #[arg(long, default_value_t = 300)]
    unmount_timeout: u64,
}

fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let p = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !p.starts_with('/') {
        bail!("--endpoint {endpoint}: give unix:///absolute/path");
    }
    Ok(PathBuf::from(p))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let atefs = match cli.atefs {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("atefs"),
    };
    if !atefs.exists() {
        bail!("{} not found (give --atefs PATH)", atefs.display());
    }
    let sock = socket_path(&cli.endpoint)?;
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by an earlier instance (kubelet keeps the path).
    match std::fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", sock.display())),
    }
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("listening on {}", sock.display()))?;
    let metrics = Arc::new(Metrics::default());
    let http = tokio::net::TcpListener::bind(&cli.metrics)
        .await
        .with_context(|| format!("listening on {} (metrics)", cli.metrics))?;
    tokio::spawn(csi_driver::metrics::serve(http, metrics.clone()));
    let node = NodeService::new(
        NodeConfig {
            node_id: cli.node_id,
            state_dir: cli.state_dir,
            atefs_bin: atefs,
            servers: cli.servers,
            ca: cli.ca,
            insecure_plaintext: cli.insecure_plaintext,
            mount_timeout: Duration::from_secs(cli.mount_timeout),
            unmount_timeout: Duration::from_secs(cli.unmount_timeout),
        },
        metrics,
    );
    tracing::info!(socket = %sock.display(), "serving CSI Identity and Node");
    // The line tests and scripts wait for.
    println!("ready {}", sock.display());
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping; the volumes stay mounted");
    };
    tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(IdentityService {
            controller: false,
        }))
        .add_service(pb::node_server::NodeServer::new(node))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("serving CSI")?;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}
