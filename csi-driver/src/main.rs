//! `atefs-csi`: the CSI plugin of atefs: Identity, plus Node (`--node-id`, on every node) and/or
//! Controller (`--controller`, beside the provisioner sidecar), over a unix socket.

use anyhow::{bail, Context, Result};
use clap::Parser;
use csi_driver::controller::ControllerService;
use csi_driver::identity::IdentityService;
use csi_driver::keystore::{DirStore, KeyStore, Records, SecretStore};
use csi_driver::metrics::Metrics;
use csi_driver::node::{NodeConfig, NodeService};
use csi_driver::pb;
use node_agent::client::AgentClient;
use node_agent::daemon::Daemons;
use node_agent::Launcher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "atefs-csi",
    version,
    about = "The atefs CSI plugin (Identity, Node, Controller)"
)]
struct Cli {
    /// The CSI socket kubelet calls (unix:///path or a path).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Serve the Node service as this node (the Kubernetes node name).
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// Serve the Controller service (create and delete volumes).
    #[arg(long)]
    controller: bool,
    /// Controller: keep each volume's keys in a Secret of this namespace (in-cluster API access).
    #[arg(long, env = "SECRETS_NAMESPACE", conflicts_with = "keys_dir")]
    secrets_namespace: Option<String>,
    /// Controller with Secrets: seconds between sweeps for orphaned volumes (a volume Secret
    /// whose PersistentVolume is gone: its chain and Secret are deleted); 0 turns them off.
    #[arg(long, default_value_t = 300)]
    orphan_sweep: u64,
    /// Controller with Secrets: a volume Secret younger than this many seconds is never an
    /// orphan (its PersistentVolume may not exist yet).
    #[arg(long, default_value_t = 900)]
    orphan_grace: u64,
    /// Controller: keep each volume's keys in files of this directory (no Kubernetes);
    /// snapshots' keys go in its `snapshots` directory, a rekey's pending ones in `rekeys`.
    #[arg(long)]
    keys_dir: Option<PathBuf>,
    /// Controller: where a snapshot, clone or rekey keeps a cache of its source while it
    /// reads it (as large as the source's data; removed when done).
    #[arg(long, env = "ATEFS_WORK_DIR", default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Instead of serving: give volume NAME (its PersistentVolume's name) new keys in place
    /// and its Secret the new envelope, then exit; run again after a failure, it goes on. For
    /// `kubectl exec` in the controller's container, whose environment holds the settings.
    /// The volume must not be in use (docs/operations.md, "Changing a volume's keys").
    #[arg(long, value_name = "NAME", conflicts_with_all = ["node_id", "controller"])]
    rekey: Option<String>,
    /// Instead of serving: back volume NAME up to --file (`-`: standard output), its files
    /// as they are now, still encrypted and signed (docs/operations.md, "Backups off the
    /// cluster"). The backup holds no key: the volume's Secret opens it.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["node_id", "controller", "rekey"])]
    backup: Option<String>,
    /// Instead of serving: make volume NAME's chain again from the backup in --file (`-`:
    /// standard input), on chain servers that no longer have it; its Secret must exist.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["node_id", "controller", "rekey", "backup"])]
    restore: Option<String>,
    /// The backup file of --backup or --restore (`-`: standard output or input).
    #[arg(long, default_value = "-")]
    file: PathBuf,
    /// Instead of serving: back every volume up into DIR (a file per volume and run, in a
    /// directory per volume), keeping the newest --keep of each; what the chart's scheduled
    /// backups run. Exits nonzero if any volume failed (the others are still backed up).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["node_id", "controller", "rekey", "backup", "restore"])]
    backup_all: Option<PathBuf>,
    /// Backups of each volume --backup-all keeps.
    #[arg(long, default_value_t = 7)]
    keep: usize,
    /// Where staged volumes keep their key envelope (0600), cache and daemon log.
    #[arg(long, default_value = "/var/lib/atefs-csi")]
    state_dir: PathBuf,
    /// The atefs binary (default: `atefs` beside this one).
    #[arg(long)]
    atefs: Option<PathBuf>,
    /// Node: run the mount daemons in the node agent listening here (unix:///path), not in
    /// this process, so that they outlive this plugin's container (docs/kubernetes.md).
    #[arg(long, env = "NODE_AGENT")]
    node_agent: Option<String>,
    /// Chain-server API addresses (host:port, comma-separated), unless a volume names its own.
    #[arg(long, env = "ATEFS_SERVERS", value_delimiter = ',')]
    servers: Vec<String>,
    /// CA certificate (PEM) of the chain servers.
    #[arg(long, env = "ATEFS_CA")]
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

/// The Node service's settings from `cli`.
fn node_config(id: &str, cli: &Cli, atefs: PathBuf) -> NodeConfig {
    NodeConfig {
        node_id: id.to_string(),
        state_dir: cli.state_dir.clone(),
        atefs_bin: atefs,
        servers: cli.servers.clone(),
        ca: cli.ca.clone(),
        insecure_plaintext: cli.insecure_plaintext,
        mount_timeout: Duration::from_secs(cli.mount_timeout),
        unmount_timeout: Duration::from_secs(cli.unmount_timeout),
    }
}

/// Where the Node service's mount daemons run: the node agent, or this process.
fn launcher(cli: &Cli, atefs: PathBuf) -> Result<Launcher> {
    Ok(match &cli.node_agent {
        Some(endpoint) => Launcher::Agent(AgentClient::new(node_agent::socket::socket_path(
            endpoint,
        )?)?),
        None => Launcher::Local(Daemons::new(atefs)),
    })
}

/// A client of the Kubernetes API when records are Secrets (`--secrets-namespace`).
async fn kube_client(cli: &Cli) -> Result<Option<kube::Client>> {
    if cli.secrets_namespace.is_none() {
        return Ok(None);
    }
    let kube = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    Ok(Some(kube))
}

/// The volume records and those of kind `other` that `cli` names: Secrets through `kube`, or
/// files in `--keys-dir` (the other kind's in a directory of its own there).
fn key_stores(
    cli: &Cli,
    kube: Option<kube::Client>,
    other: Records,
    what: &str,
) -> Result<(Arc<dyn KeyStore>, Arc<dyn KeyStore>)> {
    if let (Some(ns), Some(kube)) = (&cli.secrets_namespace, kube) {
        return Ok((
            Arc::new(SecretStore::new(kube.clone(), ns)),
            Arc::new(SecretStore::of(kube, ns, other)),
        ));
    }
    let Some(dir) = &cli.keys_dir else {
        bail!("{what} needs --secrets-namespace NS or --keys-dir DIR");
    };
    let sub = dir.join(match other {
        Records::Volumes => bail!("the other records must be snapshots or rekeys"),
        Records::Snapshots => "snapshots",
        Records::Rekeys => "rekeys",
    });
    let store = |d: &std::path::Path| -> Result<Arc<dyn KeyStore>> {
        Ok(Arc::new(
            DirStore::new(d.to_path_buf()).with_context(|| format!("creating {}", d.display()))?,
        ))
    };
    Ok((store(dir)?, store(&sub)?))
}

/// The Controller service of `cli`: a client of the chain servers and a key store.
async fn controller_service(cli: &Cli, metrics: Arc<Metrics>) -> Result<ControllerService> {
    if cli.servers.is_empty() {
        bail!("--controller needs --servers");
    }
    let client = Arc::new(ate::remote::RemoteClient::new(
        ate::remote::RemoteOptions::from_flags(
            cli.servers.clone(),
            cli.ca.as_deref(),
            cli.insecure_plaintext,
        )?,
    )?);
    let kube = kube_client(cli).await?;
    if let (Some(ns), Some(kube)) = (&cli.secrets_namespace, &kube) {
        if cli.orphan_sweep > 0 {
            let collector = csi_driver::orphans::OrphanCollector::new(
                kube.clone(),
                ns,
                Duration::from_secs(cli.orphan_grace),
            );
            let checker = csi_driver::status::StatusChecker::new(
                kube.clone(),
                ns,
                csi_driver::identity::DRIVER_NAME,
            );
            tokio::spawn(sweep_orphans(
                collector,
                checker,
                client.clone(),
                Duration::from_secs(cli.orphan_sweep),
                metrics.clone(),
            ));
        }
    }
    let stores = key_stores(cli, kube, Records::Snapshots, "--controller")?;
    Ok(ControllerService::new(
        client,
        stores.0,
        stores.1,
        cli.work_dir.clone(),
        metrics,
    ))
}

/// The chain servers' client options of a one-off command (`--rekey`, `--backup`, ...),
/// from the flags or the environment the controller's container sets.
fn one_off_options(cli: &Cli, what: &str) -> Result<ate::remote::RemoteOptions> {
    if cli.servers.is_empty() {
        bail!("{what} needs --servers (or ATEFS_SERVERS)");
    }
    Ok(ate::remote::RemoteOptions::from_flags(
        cli.servers.clone(),
        cli.ca.as_deref(),
        cli.insecure_plaintext,
    )?)
}

/// `--rekey NAME`: the volume's keys changed and its record replaced (csi_driver::rekey).
async fn rekey(cli: &Cli, name: &str) -> Result<()> {
    use csi_driver::rekey::{rekey_volume, RekeyOutcome};
    let opts = one_off_options(cli, "--rekey")?;
    let (volumes, pending) = key_stores(cli, kube_client(cli).await?, Records::Rekeys, "--rekey")?;
    std::fs::create_dir_all(&cli.work_dir)
        .with_context(|| format!("creating {}", cli.work_dir.display()))?;
    match rekey_volume(&*volumes, &*pending, opts, &cli.work_dir, name)
        .await
        .with_context(|| format!("changing the keys of volume {name}; run the same command again to go on"))?
    {
        RekeyOutcome::Rekeyed(r) => println!(
            "volume {name}: new owner and data keys ({} records sealed again in {} transactions); its Secret holds them",
            r.records, r.transactions
        ),
        RekeyOutcome::Restored => println!(
            "volume {name}: its keys had been changed; its Secret was made again with them"
        ),
    }
    Ok(())
}

/// `--backup NAME` or `--restore NAME` (csi_driver::backup).
async fn backup_or_restore(cli: &Cli, name: &str, backup: bool) -> Result<()> {
    use csi_driver::backup::{backup_volume, restore_volume, Stream};
    let what = if backup { "--backup" } else { "--restore" };
    let opts = one_off_options(cli, what)?;
    let (volumes, _) = key_stores(cli, kube_client(cli).await?, Records::Snapshots, what)?;
    let file = Stream::from_arg(&cli.file);
    if backup {
        let s = backup_volume(&*volumes, opts, &cli.work_dir, name, file)
            .await
            .with_context(|| format!("backing up volume {name}"))?;
        // Standard output may be the backup itself: the report goes to the log.
        tracing::info!(
            volume = name,
            index = s.index,
            records = s.records,
            bytes = s.bytes,
            "volume backed up"
        );
    } else {
        let r = restore_volume(&*volumes, opts, &cli.work_dir, name, file)
            .await
            .with_context(|| {
                format!("restoring volume {name}; run the same command again to start over")
            })?;
        println!(
            "volume {name}: restored as of chain index {} ({} records in {} transactions)",
            r.summary.index, r.summary.records, r.transactions
        );
    }
    Ok(())
}

/// `--backup-all DIR` (csi_driver::backup::backup_all).
async fn backup_all(cli: &Cli, dir: &std::path::Path) -> Result<()> {
    let opts = one_off_options(cli, "--backup-all")?;
    let (volumes, _) = key_stores(
        cli,
        kube_client(cli).await?,
        Records::Snapshots,
        "--backup-all",
    )?;
    // UTC to the nanosecond, fixed width: names sort by time, and two runs never collide.
    let now = k8s_openapi::jiff::Timestamp::now();
    let stamp = format!(
        "{}.{:09}Z",
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_nanosecond()
    );
    let r = csi_driver::backup::backup_all(&*volumes, opts, &cli.work_dir, dir, cli.keep, &stamp)
        .await
        .with_context(|| format!("backing up the volumes into {}", dir.display()))?;
    println!(
        "{} volumes backed up into {} ({} older backups removed), {} failed",
        r.written.len(),
        dir.display(),
        r.removed,
        r.failed.len()
    );
    for (name, why) in &r.failed {
        eprintln!("volume {name}: {why}");
    }
    if !r.failed.is_empty() {
        bail!("{} volumes were not backed up", r.failed.len());
    }
    Ok(())
}

/// Sweeps for orphaned volumes and reports volumes in trouble every `every`, for as long as
/// the process runs.
async fn sweep_orphans(
    collector: csi_driver::orphans::OrphanCollector,
    checker: csi_driver::status::StatusChecker,
    client: Arc<ate::remote::RemoteClient>,
    every: Duration,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match collector.sweep(client.as_ref()).await {
            Ok(s) => {
                metrics.orphans_collected(s.collected.len() as u64);
                tracing::debug!(
                    seen = s.seen,
                    collected = s.collected.len(),
                    failed = s.failed,
                    "orphan sweep"
                );
            }
            Err(e) => tracing::warn!(error = %e, "orphan sweep failed; retrying at the next"),
        }
        let checked = match checker.check(client.as_ref()).await {
            Ok(findings) => {
                metrics.set_problems(&findings);
                checker.report(&findings).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            tracing::warn!(error = %e, "volume status check failed; retrying at the next sweep");
        }
    }
}

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
    if let Some(name) = &cli.rekey {
        return rekey(&cli, name).await;
    }
    if let Some(name) = &cli.backup {
        return backup_or_restore(&cli, name, true).await;
    }
    if let Some(name) = &cli.restore {
        return backup_or_restore(&cli, name, false).await;
    }
    if let Some(dir) = &cli.backup_all {
        return backup_all(&cli, dir).await;
    }
    if cli.node_id.is_none() && !cli.controller {
        bail!("serve something: --node-id NAME (Node service), --controller, or both");
    }
    let atefs =
        node_agent::daemon::atefs_binary(cli.atefs.clone()).context("locating this binary")?;
    if cli.node_id.is_some() && cli.node_agent.is_none() && !atefs.exists() {
        bail!("{} not found (give --atefs PATH)", atefs.display());
    }
    let sock = node_agent::socket::socket_path(&cli.endpoint)?;
    let listener = node_agent::socket::bind(&sock)?;
    let metrics = Arc::new(Metrics::default());
    let http = tokio::net::TcpListener::bind(&cli.metrics)
        .await
        .with_context(|| format!("listening on {} (metrics)", cli.metrics))?;
    tokio::spawn(csi_driver::metrics::serve(http, metrics.clone()));
    let node = match &cli.node_id {
        Some(id) => Some(pb::node_server::NodeServer::new(NodeService::new(
            node_config(id, &cli, atefs.clone()),
            launcher(&cli, atefs)?,
            metrics.clone(),
        ))),
        None => None,
    };
    let controller = if cli.controller {
        Some(pb::controller_server::ControllerServer::new(
            controller_service(&cli, metrics).await?,
        ))
    } else {
        None
    };
    tracing::info!(socket = %sock.display(), node = cli.node_id.is_some(), controller = cli.controller, "serving CSI");
    node_agent::socket::announce_ready(&sock)?;
    let stop = node_agent::socket::stop_signal()?;
    let shutdown = async move {
        stop.await;
        tracing::info!("stopping; the volumes stay mounted");
    };
    tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(IdentityService {
            controller: controller.is_some(),
        }))
        .add_optional_service(node)
        .add_optional_service(controller)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("serving CSI")?;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}
