//! The CSI Node service: a volume is staged once per node (an `atefs mount` daemon on the
//! staging path) and published to each pod by a bind mount, read-only when asked. Every call is
//! idempotent and answers from what the kernel has mounted (`mountinfo`), so a restarted plugin
//! carries on where the last one stopped.

use crate::capability::check_capability;
use crate::in_flight::InFlight;
use crate::keystore::create_private_dir;
use crate::metrics::Metrics;
use crate::mountinfo::{self, MountEntry};
use crate::pb;
use crate::pb::volume_capability::access_mode::Mode;
use crate::pb::volume_capability::AccessType;
use crate::volume_id::{parse_keys, VolumeId};
use node_agent::daemon::{log_tail, MountSpec};
use node_agent::Launcher;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// What a node plugin needs to know.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (kubelet's node name).
    pub node_id: String,
    /// Where each staged volume keeps its key envelope, cache and daemon log.
    pub state_dir: PathBuf,
    /// The atefs binary.
    pub atefs_bin: PathBuf,
    /// Chain-server API addresses, unless a volume names its own (`servers` attribute).
    pub servers: Vec<String>,
    /// CA certificate of the chain servers.
    pub ca: Option<PathBuf>,
    /// Talk to the chain servers without TLS (tests only).
    pub insecure_plaintext: bool,
    /// How long a mount may take to come up (it may replay a long chain).
    pub mount_timeout: Duration,
    /// How long an unmounting daemon may take to commit what it buffers and exit.
    pub unmount_timeout: Duration,
}

/// A staged volume's files on the node, in its state directory.
#[derive(Debug)]
struct VolumeFiles(PathBuf);

impl VolumeFiles {
    fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }
    fn cache(&self) -> PathBuf {
        self.0.join("cache")
    }
    fn log(&self) -> PathBuf {
        self.0.join("mount.log")
    }
    fn pid(&self) -> PathBuf {
        self.0.join("pid")
    }
    /// Where it was staged (the staging path's bytes).
    fn staging(&self) -> PathBuf {
        self.0.join("staging")
    }
}

/// The Node service.
#[derive(Debug)]
pub struct NodeService {
    cfg: NodeConfig,
    /// Where the mount daemons run: this process, or the node agent.
    daemons: Launcher,
    metrics: Arc<Metrics>,
    /// Volumes with a call in progress.
    busy: InFlight,
}

fn required<'a>(v: &'a str, what: &str) -> Result<&'a str, Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    Ok(v)
}

fn absolute(v: &str, what: &str) -> Result<PathBuf, Status> {
    let p = PathBuf::from(required(v, what)?);
    if !p.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "{what} must be an absolute path, not {v:?}"
        )));
    }
    Ok(p)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// The mount flags of a capability (a StorageClass's `mountOptions`).
fn mount_flags(cap: Option<&pb::VolumeCapability>) -> &[String] {
    match cap.and_then(|c| c.access_type.as_ref()) {
        Some(AccessType::Mount(m)) => &m.mount_flags,
        _ => &[],
    }
}

/// The `timeout=SECONDS` mount option: how long the volume's mount retries a call to the
/// cluster before it fails with EIO (`atefs mount --timeout-secs`; applied at stage).
fn call_timeout(cap: Option<&pb::VolumeCapability>) -> Result<Option<u64>, Status> {
    let mut timeout = None;
    for f in mount_flags(cap) {
        if let Some(v) = f.strip_prefix("timeout=") {
            match v.parse::<u64>() {
                Ok(s) if (1..=3600).contains(&s) => timeout = Some(s),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "mount option {f:?}: timeout=SECONDS, 1 to 3600"
                    )))
                }
            }
        }
    }
    Ok(timeout)
}

/// The mount flags a publish may ask for (applied to the pod's bind mount; `timeout=` is the
/// stage's, see [`call_timeout`]).
fn bind_flags(cap: Option<&pb::VolumeCapability>) -> Result<rustix::mount::MountFlags, Status> {
    use rustix::mount::MountFlags;
    let mut flags = MountFlags::empty();
    call_timeout(cap)?;
    for f in mount_flags(cap) {
        if f.starts_with("timeout=") {
            continue;
        }
        flags |= match f.as_str() {
            "ro" => MountFlags::RDONLY,
            "nosuid" => MountFlags::NOSUID,
            "nodev" => MountFlags::NODEV,
            "noexec" => MountFlags::NOEXEC,
            "noatime" => MountFlags::NOATIME,
            "rw" | "defaults" => MountFlags::empty(),
            other => {
                return Err(Status::invalid_argument(format!(
                    "mount flag {other:?} is not supported (ro, rw, nosuid, nodev, noexec, noatime, timeout=SECONDS)"
                )))
            }
        };
    }
    Ok(flags)
}

impl NodeService {
    /// A Node service over `cfg` whose mount daemons `daemons` runs, counting its calls in
    /// `metrics`.
    pub fn new(cfg: NodeConfig, daemons: Launcher, metrics: Arc<Metrics>) -> Self {
        Self {
            daemons,
            cfg,
            metrics,
            busy: InFlight::default(),
        }
    }

    async fn observe<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        crate::metrics::observe(&self.metrics, method, call).await
    }

    fn volume_dir(&self, id: &VolumeId) -> VolumeFiles {
        VolumeFiles(self.cfg.state_dir.join("volumes").join(id.to_string()))
    }

    fn spec(
        &self,
        id: &VolumeId,
        dir: &Path,
        ctx: &BTreeMap<String, String>,
        (mode, call_timeout_secs): (Mode, Option<u64>),
    ) -> Result<MountSpec, Status> {
        let state = self.volume_dir(id);
        let servers: Vec<String> = match ctx.get("servers") {
            Some(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            None => self.cfg.servers.clone(),
        };
        if servers.is_empty() {
            return Err(Status::invalid_argument(
                "no chain servers: the volume has no `servers` attribute and the plugin no --servers",
            ));
        }
        // One writer at a time unless the volume is shared between nodes: an --exclusive mount
        // waits for the cluster only at fsync (docs/csi.md). A volume may say otherwise.
        let single = matches!(
            mode,
            Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter
        );
        let exclusive = match ctx.get("exclusive").map(String::as_str) {
            None => single,
            Some("true") => true,
            Some("false") => false,
            Some(v) => {
                return Err(Status::invalid_argument(format!(
                    "volume attribute exclusive={v:?}: true or false"
                )))
            }
        };
        let quota = match ctx.get("capacity") {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!("volume attribute capacity={v:?}: bytes"))
            })?),
        };
        Ok(MountSpec {
            dir: dir.to_path_buf(),
            cache: state.cache(),
            keys: state.keys(),
            servers,
            ca: self.cfg.ca.clone(),
            insecure_plaintext: self.cfg.insecure_plaintext,
            exclusive,
            quota,
            call_timeout_secs,
            log: state.log(),
            pid_file: state.pid(),
        })
    }

    async fn stage(&self, r: pb::NodeStageVolumeRequest) -> Result<(), Status> {
        let id = VolumeId::parse(&r.volume_id)?;
        let dir = absolute(&r.staging_target_path, "staging_target_path")?;
        let mode = check_capability(r.volume_capability.as_ref())?;
        let how = (mode, call_timeout(r.volume_capability.as_ref())?);
        let _busy = self.busy.claim(format!("volume {id}"))?;
        if let Some(m) = mountinfo::at(&dir).map_err(|e| internal("reading mountinfo", e))? {
            if mountinfo::is_atefs(&m) && self.staged_here(&id, &dir) {
                if !self.detach_if_dead(&id, &dir)? {
                    return Ok(());
                }
            } else {
                return Err(Status::already_exists(format!(
                    "{} already has a mount ({} from {}) that is not volume {id}",
                    dir.display(),
                    m.fs_type,
                    m.source
                )));
            }
        }
        let keys = parse_keys(&r.secrets, &id)?;
        let ctx: BTreeMap<String, String> = r.volume_context.into_iter().collect();
        self.mount_staged(&id, &dir, &ctx, how, Some(keys)).await
    }

    /// True if the atefs mount staged at `dir` is dead (its daemon died: killed, out of
    /// memory, its agent replaced); it is then detached, not unmounted, since running pods'
    /// bind mounts still hold it (they see the error until they restart), so that the volume
    /// can be mounted there afresh for the pods published from now on.
    fn detach_if_dead(&self, id: &VolumeId, dir: &Path) -> Result<bool, Status> {
        let Err(e) = rustix::fs::statfs(dir) else {
            return Ok(false);
        };
        tracing::warn!(volume = %id, dir = %dir.display(), error = %e, "the staged mount is dead; mounting the volume again");
        self.metrics.daemon_failed();
        rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| internal("detaching the dead mount", e))?;
        Ok(true)
    }

    /// Mounts volume `id` at the staging path `dir`: with `keys` from the request, or (a dead
    /// mount staged again at publish) with those its staging kept.
    async fn mount_staged(
        &self,
        id: &VolumeId,
        dir: &Path,
        ctx: &BTreeMap<String, String>,
        how: (Mode, Option<u64>),
        keys: Option<ate::KeyFile>,
    ) -> Result<(), Status> {
        let id = *id;
        let from_request = keys.is_some();
        let spec = self.spec(&id, dir, ctx, how)?;
        let state = self.volume_dir(&id);
        create_private_dir(&state.0)
            .map_err(|e| internal("creating the volume's state directory", e))?;
        std::fs::create_dir_all(dir).map_err(|e| internal("creating the staging directory", e))?;
        match keys {
            Some(keys) => keys
                .save(&spec.keys)
                .map_err(|e| internal("writing the key envelope", e))?,
            None if spec.keys.exists() => {}
            None => {
                return Err(Status::failed_precondition(format!(
                    "volume {id}'s mount at {} is dead and its keys are gone: unstage and stage it again",
                    dir.display()
                )))
            }
        }
        std::fs::write(state.staging(), dir.as_os_str().as_encoded_bytes())
            .map_err(|e| internal("recording the staging path", e))?;
        match self.daemons.start(&spec, self.cfg.mount_timeout).await {
            Ok(pid) => {
                tracing::info!(volume = %id, dir = %dir.display(), pid, exclusive = spec.exclusive, "staged");
                Ok(())
            }
            Err(e) => {
                // Keys written for a stage that failed go; those a staging kept stay for the
                // retry (they are removed at unstage).
                if from_request {
                    let _ = std::fs::remove_file(&spec.keys);
                }
                Err(Status::internal(format!("mounting volume {id}: {e}")))
            }
        }
    }

    /// Moves a failed volume's state aside (`failed/ID-SECONDS`); returns where it went.
    fn keep_failed(&self, id: &VolumeId, state: &Path) -> PathBuf {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let to = self
            .cfg
            .state_dir
            .join("failed")
            .join(format!("{id}-{secs}"));
        let moved = to
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::rename(state, &to));
        match moved {
            Ok(()) => to,
            Err(e) => {
                tracing::warn!(error = %e, "could not move the failed volume's state aside");
                state.to_path_buf()
            }
        }
    }

    /// True if this plugin staged `id` at `dir` (its state says so).
    fn staged_here(&self, id: &VolumeId, dir: &Path) -> bool {
        std::fs::read(self.volume_dir(id).staging())
            .is_ok_and(|b| b == dir.as_os_str().as_encoded_bytes())
    }

    async fn unstage(&self, r: pb::NodeUnstageVolumeRequest) -> Result<(), Status> {
        let id = VolumeId::parse(&r.volume_id)?;
        let dir = absolute(&r.staging_target_path, "staging_target_path")?;
        let _busy = self.busy.claim(format!("volume {id}"))?;
        let state = self.volume_dir(&id);
        let all = mountinfo::read().map_err(|e| internal("reading mountinfo", e))?;
        if let Some(m) = all.iter().rev().find(|m| m.mount_point == dir) {
            if !mountinfo::is_atefs(m) {
                return Err(Status::failed_precondition(format!(
                    "{} has a {} mount, not an atefs volume",
                    dir.display(),
                    m.fs_type
                )));
            }
            let published: Vec<&MountEntry> = all
                .iter()
                .filter(|o| o.device == m.device && o.mount_point != dir)
                .collect();
            if let Some(p) = published.first() {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is still published at {} (unpublish it first)",
                    p.mount_point.display()
                )));
            }
            let out = tokio::process::Command::new(&self.cfg.atefs_bin)
                .arg("umount")
                .arg(&dir)
                .output()
                .await
                .map_err(|e| internal("running atefs umount", e))?;
            if !out.status.success() {
                return Err(Status::internal(format!(
                    "unmounting {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        // The kernel has let go; the daemon commits what it still buffers, then exits.
        let status = self
            .daemons
            .wait_exit(&state.pid(), &dir, &state.log(), self.cfg.unmount_timeout)
            .await
            .map_err(|e| Status::internal(format!("unstaging volume {id}: {e}")))?;
        let _ = std::fs::remove_file(state.keys());
        if let Some(s) = status.filter(|s| !s.success) {
            // The volume is unmounted either way and kubelet can do nothing about it; what the
            // daemon could not commit may be in its cache, so that is kept (without the keys)
            // for an operator, and the failure is logged and counted.
            let kept = self.keep_failed(&id, &state.0);
            self.metrics.daemon_failed();
            tracing::error!(volume = %id, status = %s, kept = %kept.display(), log = %log_tail(&VolumeFiles(kept.clone()).log(), 20), "the mount daemon failed at unmount");
        } else if state.0.exists() {
            std::fs::remove_dir_all(&state.0)
                .map_err(|e| internal("removing the volume's state", e))?;
        }
        tracing::info!(volume = %id, dir = %dir.display(), "unstaged");
        Ok(())
    }

    async fn publish(&self, r: pb::NodePublishVolumeRequest) -> Result<(), Status> {
        let id = VolumeId::parse(&r.volume_id)?;
        let target = absolute(&r.target_path, "target_path")?;
        let staging = absolute(&r.staging_target_path, "staging_target_path")?;
        let mode = check_capability(r.volume_capability.as_ref())?;
        let mut flags = bind_flags(r.volume_capability.as_ref())?;
        if r.readonly || matches!(mode, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly) {
            flags |= rustix::mount::MountFlags::RDONLY;
        }
        let read_only = flags.contains(rustix::mount::MountFlags::RDONLY);
        let _busy = self.busy.claim(format!("volume {id}"))?;
        let mut all = mountinfo::read().map_err(|e| internal("reading mountinfo", e))?;
        let staged_at = |all: &[MountEntry]| {
            all.iter()
                .rev()
                .any(|m| m.mount_point == staging && mountinfo::is_atefs(m))
        };
        // kubelet stages a volume once per node, not per pod: a dead staging is mounted again
        // here, so that the pod being published gets a working volume.
        if staged_at(&all) && self.detach_if_dead(&id, &staging)? {
            let ctx: BTreeMap<String, String> = r.volume_context.into_iter().collect();
            let how = (mode, call_timeout(r.volume_capability.as_ref())?);
            self.mount_staged(&id, &staging, &ctx, how, None).await?;
            all = mountinfo::read().map_err(|e| internal("reading mountinfo", e))?;
        }
        let Some(staged) = all
            .iter()
            .rev()
            .find(|m| m.mount_point == staging && mountinfo::is_atefs(m))
        else {
            return Err(Status::failed_precondition(format!(
                "volume {id} is not staged at {}",
                staging.display()
            )));
        };
        if let Some(t) = all.iter().rev().find(|m| m.mount_point == target) {
            if t.device == staged.device && t.read_only == read_only {
                return Ok(());
            }
            return Err(Status::already_exists(format!(
                "{} is already a mount ({} from {}, {}) incompatible with this publish",
                target.display(),
                t.fs_type,
                t.source,
                if t.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            )));
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| internal("creating the target directory", e))?;
        rustix::mount::mount_bind(&staging, &target).map_err(|e| {
            internal(
                &format!(
                    "bind-mounting {} on {}",
                    staging.display(),
                    target.display()
                ),
                e,
            )
        })?;
        if !flags.is_empty() {
            // A bind mount takes flags only when remounted.
            if let Err(e) =
                rustix::mount::mount_remount(&target, rustix::mount::MountFlags::BIND | flags, "")
            {
                let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty());
                return Err(internal("applying the mount flags", e));
            }
        }
        tracing::info!(volume = %id, target = %target.display(), read_only, "published");
        Ok(())
    }

    async fn unpublish(&self, r: pb::NodeUnpublishVolumeRequest) -> Result<(), Status> {
        let id = VolumeId::parse(&r.volume_id)?;
        let target = absolute(&r.target_path, "target_path")?;
        let _busy = self.busy.claim(format!("volume {id}"))?;
        // A target published twice has two mounts stacked on it.
        while let Some(m) = mountinfo::at(&target).map_err(|e| internal("reading mountinfo", e))? {
            if !mountinfo::is_atefs(&m) {
                return Err(Status::failed_precondition(format!(
                    "{} has a {} mount, not an atefs volume",
                    target.display(),
                    m.fs_type
                )));
            }
            rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty())
                .map_err(|e| internal(&format!("unmounting {}", target.display()), e))?;
        }
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(&format!("removing {}", target.display()), e)),
        }
        tracing::info!(volume = %id, target = %target.display(), "unpublished");
        Ok(())
    }

    fn stats(
        &self,
        r: &pb::NodeGetVolumeStatsRequest,
    ) -> Result<pb::NodeGetVolumeStatsResponse, Status> {
        VolumeId::parse(&r.volume_id)?;
        let path = absolute(&r.volume_path, "volume_path")?;
        let m = mountinfo::at(&path).map_err(|e| internal("reading mountinfo", e))?;
        if !m.as_ref().is_some_and(mountinfo::is_atefs) {
            return Err(Status::not_found(format!(
                "no atefs volume is mounted at {}",
                path.display()
            )));
        }
        let v = match rustix::fs::statvfs(&path) {
            Ok(v) => v,
            Err(e) => {
                return Ok(pb::NodeGetVolumeStatsResponse {
                    usage: vec![],
                    volume_condition: Some(pb::VolumeCondition {
                        abnormal: true,
                        message: format!(
                            "statfs of {} failed: {e} (the mount daemon may have died; unstage and stage the volume again)",
                            path.display()
                        ),
                    }),
                })
            }
        };
        let condition = lapse(&path).map_or_else(
            || pb::VolumeCondition {
                abnormal: false,
                message: String::new(),
            },
            |why| pb::VolumeCondition {
                abnormal: true,
                message: format!(
                    "the volume's mount cannot reach the chain servers ({why}); it reconnects by itself, and meanwhile opens, closes and fsyncs fail with EIO"
                ),
            },
        );
        let i = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        let bytes = |blocks: u64| i(blocks.saturating_mul(v.f_frsize));
        Ok(pb::NodeGetVolumeStatsResponse {
            usage: vec![
                pb::VolumeUsage {
                    available: bytes(v.f_bavail),
                    total: bytes(v.f_blocks),
                    used: bytes(v.f_blocks.saturating_sub(v.f_bfree)),
                    unit: pb::volume_usage::Unit::Bytes.into(),
                },
                pb::VolumeUsage {
                    available: i(v.f_favail),
                    total: i(v.f_files),
                    used: i(v.f_files.saturating_sub(v.f_ffree)),
                    unit: pb::volume_usage::Unit::Inodes.into(),
                },
            ],
            volume_condition: Some(condition),
        })
    }
}

/// Why the atefs mount at `path` is not following its chain, if it says so (its root's
/// `atefs.status` attribute; a daemon older than that attribute says nothing).
fn lapse(path: &Path) -> Option<String> {
    let mut buf = [0u8; 4096];
    let n = rustix::fs::getxattr(path, "atefs.status", &mut buf[..]).ok()?;
    let status = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
    status.strip_prefix("not following: ").map(str::to_owned)
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        self.observe("NodeStageVolume", async {
            self.stage(req.into_inner()).await?;
            Ok(pb::NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        self.observe("NodeUnstageVolume", async {
            self.unstage(req.into_inner()).await?;
            Ok(pb::NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        self.observe("NodePublishVolume", async {
            self.publish(req.into_inner()).await?;
            Ok(pb::NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        self.observe("NodeUnpublishVolume", async {
            self.unpublish(req.into_inner()).await?;
            Ok(pb::NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        self.observe("NodeGetVolumeStats", async { self.stats(req.get_ref()) })
            .await
    }

    async fn node_expand_volume(
        &self,
        _req: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        self.observe("NodeExpandVolume", async {
            Err(Status::unimplemented(
                "expansion is not supported yet (the node does not advertise EXPAND_VOLUME)",
            ))
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        self.observe("NodeGetCapabilities", async {
            use pb::node_service_capability::rpc::Type;
            let caps = [
                Type::StageUnstageVolume,
                Type::GetVolumeStats,
                Type::VolumeCondition,
                Type::SingleNodeMultiWriter,
            ]
            .into_iter()
            .map(|t| pb::NodeServiceCapability {
                r#type: Some(pb::node_service_capability::Type::Rpc(
                    pb::node_service_capability::Rpc { r#type: t.into() },
                )),
            })
            .collect();
            Ok(pb::NodeGetCapabilitiesResponse { capabilities: caps })
        })
        .await
    }

    async fn node_get_info(
        &self,
        _req: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        self.observe("NodeGetInfo", async {
            Ok(pb::NodeGetInfoResponse {
                node_id: self.cfg.node_id.clone(),
                max_volumes_per_node: 0,
                accessible_topology: None,
            })
        })
        .await
    }
}
