//! The CSI Controller service: a volume is a chain on the chain servers plus its key envelope,
//! kept by a [`KeyStore`] (a Kubernetes Secret per volume). CreateVolume is idempotent by the
//! CO's volume name: the record is written first, then the chain created from it, so a retry
//! after any failure finds the same keys and finishes the job.
//!
//! A snapshot is a copy of a volume's chain that no one mounts, with keys of its own in a
//! store of its own; a clone, or a volume made from a snapshot, is a copy of the source's
//! chain (`ate::remote::copy_chain`: the cluster records when a copy is complete, so a retry
//! of either call never copies again what is done).

use crate::capability::check_capability;
use crate::in_flight::InFlight;
use crate::keystore::{KeyStore, StoreError, StoredVolume};
use crate::metrics::Metrics;
use crate::pb;
use crate::volume_id::VolumeId;
use ate::remote::{RemoteClient, RemoteCopyError, RemoteError, ReplicaError};
use ate::KeyFile;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// Capacity of a volume whose claim names none.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;

/// The Controller service.
#[derive(Debug)]
pub struct ControllerService {
    client: Arc<RemoteClient>,
    store: Arc<dyn KeyStore>,
    snapshots: Arc<dyn KeyStore>,
    /// Where a copy keeps the source's cache while it copies.
    work_dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Volume names and ids with a call in progress.
    busy: InFlight,
}

fn store_error(e: StoreError) -> Status {
    Status::unavailable(format!("volume records: {e}"))
}

fn remote_error(what: &str, e: RemoteError) -> Status {
    match e {
        RemoteError::NoQuorum(..) | RemoteError::Endpoint(..) => {
            Status::unavailable(format!("{what}: {e}"))
        }
        RemoteError::Refused(code, msg) => Status::new(
            if matches!(code, Code::ResourceExhausted | Code::OutOfRange) {
                code
            } else {
                Code::Internal
            },
            format!("{what}: the chain servers refused ({code:?}): {msg}"),
        ),
    }
}

/// The capacity to give a volume asked for with `range`.
fn capacity(range: Option<&pb::CapacityRange>) -> Result<u64, Status> {
    let Some(r) = range else {
        return Ok(DEFAULT_CAPACITY);
    };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Status::invalid_argument(
            "capacity_range must not be negative",
        ));
    }
    let (required, limit) = (r.required_bytes as u64, r.limit_bytes as u64);
    let want = if required > 0 {
        required
    } else {
        DEFAULT_CAPACITY.min(if limit > 0 { limit } else { u64::MAX })
    };
    if limit > 0 && want > limit {
        return Err(Status::out_of_range(format!(
            "required {required} bytes exceeds the limit of {limit}"
        )));
    }
    Ok(want)
}

/// The record of `id` in `store`: its name, and its contents unless it went meanwhile.
async fn record_in(
    store: &dyn KeyStore,
    id: &VolumeId,
) -> Result<Option<(String, Option<StoredVolume>)>, Status> {
    let Some(name) = store.find(id).await.map_err(store_error)? else {
        return Ok(None);
    };
    let v = store.get(&name).await.map_err(store_error)?;
    Ok(Some((name, v)))
}

fn copy_error(e: RemoteCopyError) -> Status {
    match e {
        RemoteCopyError::Source(ReplicaError::Remote(e)) => remote_error("reading the source", e),
        RemoteCopyError::Target(e) => remote_error("writing the copy", e),
        e @ RemoteCopyError::Source(_) => Status::unavailable(e.to_string()),
        e @ RemoteCopyError::Copy(_) => Status::internal(e.to_string()),
    }
}

/// The CSI view of snapshot `s` of volume `of`, taken at `taken` (Unix seconds).
fn snapshot_of(s: &StoredVolume, of: &str, taken: i64) -> pb::Snapshot {
    pb::Snapshot {
        size_bytes: i64::try_from(s.capacity).unwrap_or(i64::MAX),
        snapshot_id: s.keys.chain.to_hex(),
        source_volume_id: of.to_string(),
        creation_time: Some(prost_types::Timestamp {
            seconds: taken,
            nanos: 0,
        }),
        ready_to_use: true,
    }
}

fn fits(v: &StoredVolume, range: Option<&pb::CapacityRange>) -> bool {
    range.is_none_or(|r| {
        v.capacity >= r.required_bytes.max(0) as u64
            && (r.limit_bytes <= 0 || v.capacity <= r.limit_bytes as u64)
    })
}

impl ControllerService {
    /// A Controller over the cluster `client` reaches, keeping the keys of volumes in `store`
    /// and of snapshots in `snapshots`, and copies' caches in `work_dir`.
    pub fn new(
        client: Arc<RemoteClient>,
        store: Arc<dyn KeyStore>,
        snapshots: Arc<dyn KeyStore>,
        work_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            store,
            snapshots,
            work_dir,
            metrics,
            busy: InFlight::default(),
        }
    }

    /// Copies the chain of `from` into `to.chain` with `quota` (see the module's comment).
    /// The copy holds `claim` until it ends: when the CO gives up waiting and cancels the call,
    /// the copy goes on, and a retry gets ABORTED until it is done (then it finds the copy
    /// complete) instead of starting a second copy into the same chain.
    async fn copy(
        &self,
        from: &KeyFile,
        to: &KeyFile,
        quota: u64,
        claim: crate::in_flight::Claim,
    ) -> Result<(), Status> {
        let (opts, from, to) = (self.client.options().clone(), from.clone(), to.clone());
        let (dir, metrics) = (self.work_dir.clone(), self.metrics.clone());
        tokio::task::spawn_blocking(move || {
            let _claim = claim;
            let cache = tempfile::tempdir_in(&dir).map_err(|e| {
                Status::unavailable(format!("a cache for the copy in {}: {e}", dir.display()))
            })?;
            let storage = ate::storage::FileStorage::new(cache.path())
                .map_err(|e| Status::unavailable(format!("the copy's cache: {e}")))?;
            metrics.copy_started();
            let copied = ate::remote::copy_chain(opts, &from, &to, quota, Arc::new(storage));
            metrics.copy_ended(copied.as_ref().map_or(0, |r| r.bytes));
            copied.map_err(copy_error)
        })
        .await
        .map_err(|e| Status::internal(format!("the copy stopped: {e}")))??;
        Ok(())
    }

    /// The record of what a new volume is to be copied from.
    async fn content_source(&self, cs: &pb::VolumeContentSource) -> Result<StoredVolume, Status> {
        use pb::volume_content_source::Type;
        let (id, store, what) = match &cs.r#type {
            Some(Type::Volume(v)) => (&v.volume_id, &self.store, "volume"),
            Some(Type::Snapshot(s)) => (&s.snapshot_id, &self.snapshots, "snapshot"),
            None => {
                return Err(Status::invalid_argument(
                    "volume_content_source names neither a volume nor a snapshot",
                ))
            }
        };
        let id = VolumeId::parse(id)?;
        let Some((_, Some(v))) = record_in(&**store, &id).await? else {
            return Err(Status::not_found(format!("no source {what} {id}")));
        };
        self.as_large_as_now(v).await
    }

    /// `v` with the capacity its chain has now (an expansion raised the quota, not the
    /// record); NOT_FOUND when the chain is gone.
    async fn as_large_as_now(&self, mut v: StoredVolume) -> Result<StoredVolume, Status> {
        use crate::status::ChainUsage;
        let id = v.keys.chain;
        match self.client.usage(id).await {
            Ok(Some((_, quota))) => v.capacity = quota,
            Ok(None) => return Err(Status::not_found(format!("the chain of {id} is gone"))),
            Err(e) => return Err(remote_error("reading the source's chain", e)),
        }
        Ok(v)
    }

    async fn create(&self, r: pb::CreateVolumeRequest) -> Result<pb::CreateVolumeResponse, Status> {
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        for c in &r.volume_capabilities {
            check_capability(Some(c))?;
        }
        let source = match &r.volume_content_source {
            Some(cs) => Some(self.content_source(cs).await?),
            None => None,
        };
        let mut want = capacity(r.capacity_range.as_ref())?;
        if let Some(src) = &source {
            // A copy is at least as large as what it is copied from.
            let limit = r.capacity_range.as_ref().map_or(0, |c| c.limit_bytes);
            if limit > 0 && src.capacity > limit as u64 {
                return Err(Status::out_of_range(format!(
                    "the source has {} bytes, more than the limit of {limit}",
                    src.capacity
                )));
            }
            want = want.max(src.capacity);
        }
        let busy = self.busy.claim(format!("volume name {}", r.name))?;
        let v = match self.store.get(&r.name).await.map_err(store_error)? {
            Some(v) if fits(&v, r.capacity_range.as_ref()) => v,
            Some(v) => {
                return Err(Status::already_exists(format!(
                    "volume {} exists with {} bytes, outside the range asked for",
                    r.name, v.capacity
                )))
            }
            None => {
                let chain = ate::ChainId::random();
                let v = StoredVolume {
                    keys: match &source {
                        Some(src) => src.keys.for_copy(chain),
                        None => KeyFile::generate(chain),
                    },
                    capacity: want,
                    snapshot_of: None,
                };
                Self::create_record(&*self.store, &r.name, v).await?
            }
        };
        let chain = v.keys.chain;
        match &source {
            Some(src) => self.copy(&src.keys, &v.keys, v.capacity, busy).await?,
            None => {
                let genesis = ate::remote::genesis(chain, &v.keys.owner);
                match self.client.create(chain, v.capacity, genesis).await {
                    Ok(_) => {}
                    // Made by an earlier attempt whose answer was lost.
                    Err(RemoteError::Refused(Code::AlreadyExists, _)) => {}
                    Err(e) => return Err(remote_error("creating the volume's chain", e)),
                }
            }
        }
        tracing::info!(name = %r.name, volume = %chain, capacity = v.capacity, from = ?source.as_ref().map(|s| s.keys.chain), "volume created");
        Ok(pb::CreateVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: i64::try_from(v.capacity).unwrap_or(i64::MAX),
                volume_id: chain.to_hex(),
                volume_context: [("capacity".to_string(), v.capacity.to_string())].into(),
                content_source: r.volume_content_source,
            }),
        })
    }

    /// The record of volume `id`: its name, and its keys unless the record went meanwhile.
    async fn record_of(
        &self,
        id: &VolumeId,
    ) -> Result<Option<(String, Option<StoredVolume>)>, Status> {
        record_in(&*self.store, id).await
    }

    /// Writes the record of `name` (volume or snapshot) into `store`, unless a racing call
    /// wrote it first: the record that stands is returned.
    async fn create_record(
        store: &dyn KeyStore,
        name: &str,
        v: StoredVolume,
    ) -> Result<StoredVolume, Status> {
        if store.create(name, &v).await.map_err(store_error)? {
            return Ok(v);
        }
        store
            .get(name)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Status::aborted("the record vanished; retry"))
    }

    /// Deletes the chain of record `id` in `store` (a volume or a snapshot: `what`), then the
    /// record; an unknown id is already deleted.
    async fn remove(&self, store: &dyn KeyStore, id: VolumeId, what: &str) -> Result<(), Status> {
        let _busy = self.busy.claim(format!("{what} {id}"))?;
        let Some((name, v)) = record_in(store, &id).await? else {
            return Ok(());
        };
        if let Some(v) = v {
            use crate::orphans::ChainDeleter;
            self.client
                .delete_chain(id.0, &v.keys.owner)
                .await
                .map_err(|e| remote_error(&format!("deleting the {what}'s chain"), e))?;
        }
        // The keys go last: without them the chain could never be deleted.
        store.delete(&name).await.map_err(store_error)?;
        tracing::info!(%name, id = %id, "{what} deleted");
        Ok(())
    }

    async fn delete(&self, r: pb::DeleteVolumeRequest) -> Result<pb::DeleteVolumeResponse, Status> {
        let id = VolumeId::parse(&r.volume_id)?;
        self.remove(&*self.store, id, "volume").await?;
        Ok(pb::DeleteVolumeResponse {})
    }

    /// Raises the chain's quota: the mounts follow it (atefs::quota), so no node step is
    /// needed, online or not. Never shrinks a volume.
    async fn expand(
        &self,
        r: pb::ControllerExpandVolumeRequest,
    ) -> Result<pb::ControllerExpandVolumeResponse, Status> {
        let id = VolumeId::parse(&r.volume_id)?;
        let range = r
            .capacity_range
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        let want = capacity(Some(range))?;
        if r.volume_capability.is_some() {
            check_capability(r.volume_capability.as_ref())?;
        }
        let _busy = self.busy.claim(format!("volume {id}"))?;
        let not_found = || Status::not_found(format!("no volume {id}"));
        let Some((name, Some(v))) = self.record_of(&id).await? else {
            return Err(not_found());
        };
        use crate::status::ChainUsage;
        let current = match self.client.usage(id.0).await {
            Ok(Some((_, quota))) => quota,
            Ok(None) => return Err(not_found()),
            Err(e) => return Err(remote_error("reading the volume's chain", e)),
        };
        let capacity = if current >= want {
            if range.limit_bytes > 0 && current > range.limit_bytes as u64 {
                return Err(Status::out_of_range(format!(
                    "volume {id} has {current} bytes, more than the limit of {}; volumes do not shrink",
                    range.limit_bytes
                )));
            }
            current
        } else {
            self.client
                .set_quota(id.0, want, &v.keys.owner)
                .await
                .map_err(|e| remote_error("raising the volume's quota", e))?;
            tracing::info!(%name, volume = %id, from = current, to = want, "volume expanded");
            want
        };
        Ok(pb::ControllerExpandVolumeResponse {
            capacity_bytes: i64::try_from(capacity).unwrap_or(i64::MAX),
            node_expansion_required: false,
        })
    }

    async fn create_snapshot(
        &self,
        r: pb::CreateSnapshotRequest,
    ) -> Result<pb::CreateSnapshotResponse, Status> {
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let source = VolumeId::parse(&r.source_volume_id)?;
        let busy = self.busy.claim(format!("snapshot name {}", r.name))?;
        let no_volume = || Status::not_found(format!("no volume {source}"));
        // The volume, when this call looked it up already.
        let mut looked_up = None;
        let snap = match self.snapshots.get(&r.name).await.map_err(store_error)? {
            Some(s) => s,
            None => {
                let Some((_, Some(vol))) = self.record_of(&source).await? else {
                    return Err(no_volume());
                };
                let vol = self.as_large_as_now(vol).await?;
                let taken = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let s = StoredVolume {
                    keys: vol.keys.for_copy(ate::ChainId::random()),
                    capacity: vol.capacity,
                    snapshot_of: Some((source.to_string(), taken)),
                };
                looked_up = Some(vol);
                Self::create_record(&*self.snapshots, &r.name, s).await?
            }
        };
        let Some((of, taken)) = snap.snapshot_of.clone() else {
            return Err(Status::internal(format!(
                "the record of snapshot {} names no source volume",
                r.name
            )));
        };
        if of != r.source_volume_id {
            return Err(Status::already_exists(format!(
                "snapshot {} exists, of volume {of}",
                r.name
            )));
        }
        let vol = match looked_up {
            Some(vol) => vol,
            None => match self.record_of(&source).await? {
                Some((_, Some(vol))) => vol,
                _ => return Err(no_volume()),
            },
        };
        self.copy(&vol.keys, &snap.keys, snap.capacity, busy)
            .await?;
        tracing::info!(name = %r.name, snapshot = %snap.keys.chain, volume = %source, "snapshot taken");
        Ok(pb::CreateSnapshotResponse {
            snapshot: Some(snapshot_of(&snap, &of, taken)),
        })
    }

    /// Snapshots sorted by id, from `starting_token` (the id the previous page stopped
    /// before) on. A snapshot whose copy is not complete is not listed (the spec: not before
    /// it is cut).
    async fn list_snapshots(
        &self,
        r: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse, Status> {
        if r.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries must not be negative"));
        }
        let start = match r.starting_token.as_str() {
            "" => None,
            t => Some(ate::ChainId::from_hex(t).ok_or_else(|| {
                Status::aborted(format!("starting_token {t:?} is not one of ours"))
            })?),
        };
        let mut all: Vec<(String, StoredVolume)> = self
            .snapshots
            .list()
            .await
            .map_err(store_error)?
            .into_iter()
            .filter(|(_, s)| {
                (r.snapshot_id.is_empty() || s.keys.chain.to_hex() == r.snapshot_id)
                    && (r.source_volume_id.is_empty()
                        || s.snapshot_of
                            .as_ref()
                            .is_some_and(|(v, _)| *v == r.source_volume_id))
            })
            .collect();
        all.sort_by_key(|(_, s)| s.keys.chain);
        let mut entries = Vec::new();
        let mut next_token = String::new();
        for (_, s) in all
            .iter()
            .filter(|(_, s)| start.is_none_or(|t| s.keys.chain >= t))
        {
            let Some((of, taken)) = &s.snapshot_of else {
                continue;
            };
            // A copy is complete once its chain has its quota (ate::remote::copy_chain).
            use crate::status::ChainUsage;
            match self.client.usage(s.keys.chain).await {
                Ok(Some((_, quota))) if quota == s.capacity => {}
                Ok(_) => continue,
                Err(e) => return Err(remote_error("reading a snapshot's chain", e)),
            }
            if r.max_entries > 0 && entries.len() == r.max_entries as usize {
                next_token = s.keys.chain.to_hex();
                break;
            }
            entries.push(pb::list_snapshots_response::Entry {
                snapshot: Some(snapshot_of(s, of, *taken)),
            });
        }
        Ok(pb::ListSnapshotsResponse {
            entries,
            next_token,
        })
    }

    async fn delete_snapshot(
        &self,
        r: pb::DeleteSnapshotRequest,
    ) -> Result<pb::DeleteSnapshotResponse, Status> {
        let id = VolumeId::parse(&r.snapshot_id)?;
        self.remove(&*self.snapshots, id, "snapshot").await?;
        Ok(pb::DeleteSnapshotResponse {})
    }

    async fn validate(
        &self,
        r: pb::ValidateVolumeCapabilitiesRequest,
    ) -> Result<pb::ValidateVolumeCapabilitiesResponse, Status> {
        let id = VolumeId::parse(&r.volume_id)?;
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        if self.store.find(&id).await.map_err(store_error)?.is_none() {
            return Err(Status::not_found(format!("no volume {id}")));
        }
        for c in &r.volume_capabilities {
            if let Err(s) = check_capability(Some(c)) {
                return Ok(pb::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: s.message().to_string(),
                });
            }
        }
        Ok(pb::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                volume_context: r.volume_context,
                volume_capabilities: r.volume_capabilities,
                parameters: r.parameters,
            }),
            message: String::new(),
        })
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        crate::metrics::observe(&self.metrics, "CreateVolume", self.create(req.into_inner())).await
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        crate::metrics::observe(&self.metrics, "DeleteVolume", self.delete(req.into_inner())).await
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        crate::metrics::observe(
            &self.metrics,
            "ValidateVolumeCapabilities",
            self.validate(req.into_inner()),
        )
        .await
    }

    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        crate::metrics::observe(
            &self.metrics,
            "ControllerExpandVolume",
            self.expand(req.into_inner()),
        )
        .await
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        crate::metrics::observe(
            &self.metrics,
            "CreateSnapshot",
            self.create_snapshot(req.into_inner()),
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        crate::metrics::observe(
            &self.metrics,
            "DeleteSnapshot",
            self.delete_snapshot(req.into_inner()),
        )
        .await
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        crate::metrics::observe(
            &self.metrics,
            "ListSnapshots",
            self.list_snapshots(req.into_inner()),
        )
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use pb::controller_service_capability::{rpc::Type, Rpc, Type as Cap};
        crate::metrics::observe(&self.metrics, "ControllerGetCapabilities", async {
            Ok(pb::ControllerGetCapabilitiesResponse {
                capabilities: [
                    Type::CreateDeleteVolume,
                    Type::ExpandVolume,
                    Type::CloneVolume,
                    Type::CreateDeleteSnapshot,
                    Type::ListSnapshots,
                ]
                .into_iter()
                .map(|t| pb::ControllerServiceCapability {
                    r#type: Some(Cap::Rpc(Rpc { r#type: t.into() })),
                })
                .collect(),
            })
        })
        .await
    }
}
