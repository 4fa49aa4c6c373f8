//! `atefs-node-agent`: runs the `atefs mount` daemons of a node's staged volumes for the CSI
//! node plugin (`atefs-csi --node-agent`), in a container of its own, so that restarting or
//! upgrading the plugin leaves the pods' mounts alone (docs/kubernetes.md).

use anyhow::{Context, Result};
use clap::Parser;
use node_agent::pb::node_agent_server::NodeAgentServer;
use node_agent::service::AgentService;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "atefs-node-agent",
    version,
    about = "Runs atefs mount daemons for the CSI node plugin"
)]
struct Cli {
    /// The socket the plugin calls (unix:///path or a path; mode 0600).
    #[arg(long, default_value = "unix:///run/atefs/agent.sock")]
    endpoint: String,
    /// The atefs binary (default: `atefs` beside this one).
    #[arg(long)]
    atefs: Option<PathBuf>,
    /// Address of /metrics and /health.
    #[arg(long, default_value = "0.0.0.0:9811")]
    metrics: String,
    /// Where the daemons are recorded so that the next agent (a rolling update) takes them
    /// over without unmounting; this agent takes over the ones older agents recorded there.
    /// Without it, the daemons end with this agent's container.
    #[arg(long)]
    registry: Option<PathBuf>,
}

/// How long taking one mount over may take (the new daemon opens the volume).
const TAKE_OVER_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);
/// How often the registry is looked at again for daemons an older agent started since: a
/// plugin may still be talking to it.
const RESCAN: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (the terminal that started us is gone) must not end
        // the process: tracing-subscriber reports its write errors with eprintln!, which
        // panics when stderr itself is what failed.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let atefs = node_agent::daemon::atefs_binary(cli.atefs).context("locating this binary")?;
    anyhow::ensure!(
        atefs.exists(),
        "{} not found (give --atefs PATH)",
        atefs.display()
    );
    let sock = node_agent::socket::socket_path(&cli.endpoint)?;
    let listener = node_agent::socket::bind(&sock)?;
    let bound = node_agent::socket::identity(&sock);
    // Whoever can call it can mount anything as root: only the plugin (same user) may.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", sock.display()))?;
    let daemons = match &cli.registry {
        Some(dir) => node_agent::daemon::Daemons::with_registry(
            atefs,
            node_agent::registry::Registry::open(dir)
                .with_context(|| format!("opening the registry {}", dir.display()))?,
        ),
        None => node_agent::daemon::Daemons::new(atefs),
    };
    let daemons = Arc::new(daemons);
    let service = AgentService::with_daemons(daemons.clone());
    // The mounts of the agent this one replaces, before this one says it is ready (and the
    // old one is stopped).
    let taken = daemons.take_over_older(TAKE_OVER_LIMIT).await;
    service.taken_over(taken);
    if cli.registry.is_some() {
        let (daemons, service) = (daemons.clone(), service.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RESCAN).await;
                service.taken_over(daemons.take_over_older(TAKE_OVER_LIMIT).await);
            }
        });
    }
    let http = tokio::net::TcpListener::bind(&cli.metrics)
        .await
        .with_context(|| format!("listening on {} (metrics)", cli.metrics))?;
    let render = {
        let s = service.clone();
        Arc::new(move || s.render())
    };
    tokio::spawn(node_agent::http::serve(http, render));
    tracing::info!(socket = %sock.display(), "serving the node agent");
    node_agent::socket::announce_ready(&sock)?;
    let stop = node_agent::socket::stop_signal()?;
    let shutdown = async move {
        stop.await;
        tracing::info!("stopping");
    };
    tonic::transport::Server::builder()
        .add_service(NodeAgentServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("serving the node agent")?;
    // Only if it is still this agent's: during a rolling update the next agent has bound the
    // same path by now.
    if node_agent::socket::is_ours(&sock, bound) {
        let _ = std::fs::remove_file(&sock);
    }
    Ok(())
}
