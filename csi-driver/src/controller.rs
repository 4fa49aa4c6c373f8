//! The CSI Controller service: a volume is a chain on the chain servers plus its key envelope,
//! kept by a [`KeyStore`] (a Kubernetes Secret per volume). CreateVolume is idempotent by the
//! CO's volume name: the record is written first, then the chain created from it, so a retry
//! after any failure finds the same keys and finishes the job.

use crate::capability::check_capability;
use crate::in_flight::InFlight;
use crate::keystore::{KeyStore, StoreError, StoredVolume};
use crate::metrics::Metrics;
use crate::pb;
use crate::volume_id::VolumeId;
use ate::remote::{RemoteClient, RemoteError};
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// Capacity of a volume whose claim names none.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;

/// The Controller service.
#[derive(Debug)]
pub struct ControllerService {
    client: Arc<RemoteClient>,
    store: Arc<dyn KeyStore>,
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

fn fits(v: &StoredVolume, range: Option<&pb::CapacityRange>) -> bool {
    range.is_none_or(|r| {
        v.capacity >= r.required_bytes.max(0) as u64
            && (r.limit_bytes <= 0 || v.capacity <= r.limit_bytes as u64)
    })
}

impl ControllerService {
    /// A Controller over the cluster `client` reaches, keeping keys in `store`.
    pub fn new(client: Arc<RemoteClient>, store: Arc<dyn KeyStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            store,
            metrics,
            busy: InFlight::default(),
        }
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
        if r.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volumes from snapshots or clones are not supported yet",
            ));
        }
        let want = capacity(r.capacity_range.as_ref())?;
        let _busy = self.busy.claim(format!("volume name {}", r.name))?;
        let v = match self.store.get(&r.name).await.map_err(store_error)? {
            Some(v) if fits(&v, r.capacity_range.as_ref()) => v,
            Some(v) => {
                return Err(Status::already_exists(format!(
                    "volume {} exists with {} bytes, outside the range asked for",
                    r.name, v.capacity
                )))
            }
            None => {
                let v = StoredVolume {
                    keys: ate::KeyFile::generate(ate::ChainId::random()),
                    capacity: want,
                };
                if self.store.create(&r.name, &v).await.map_err(store_error)? {
                    v
                } else {
                    // Another controller made it first: use what it wrote.
                    self.store
                        .get(&r.name)
                        .await
                        .map_err(store_error)?
                        .ok_or_else(|| Status::aborted("the volume record vanished; retry"))?
                }
            }
        };
        let chain = v.keys.chain;
        let genesis = ate::remote::genesis(chain, &v.keys.owner);
        match self.client.create(chain, v.capacity, genesis).await {
            Ok(_) => {}
            // Made by an earlier attempt whose answer was lost.
            Err(RemoteError::Refused(Code::AlreadyExists, _)) => {}
            Err(e) => return Err(remote_error("creating the volume's chain", e)),
        }
        tracing::info!(name = %r.name, volume = %chain, capacity = v.capacity, "volume created");
        Ok(pb::CreateVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: i64::try_from(v.capacity).unwrap_or(i64::MAX),
                volume_id: chain.to_hex(),
                volume_context: [("capacity".to_string(), v.capacity.to_string())].into(),
                content_source: None,
            }),
        })
    }

    /// The record of volume `id`: its name, and its keys unless the record went meanwhile.
    async fn record_of(
        &self,
        id: &VolumeId,
    ) -> Result<Option<(String, Option<StoredVolume>)>, Status> {
        let Some(name) = self.store.find(id).await.map_err(store_error)? else {
            return Ok(None);
        };
        let v = self.store.get(&name).await.map_err(store_error)?;
        Ok(Some((name, v)))
    }

    async fn delete(&self, r: pb::DeleteVolumeRequest) -> Result<pb::DeleteVolumeResponse, Status> {
        let id = VolumeId::parse(&r.volume_id)?;
        let _busy = self.busy.claim(format!("volume {id}"))?;
        let Some((name, v)) = self.record_of(&id).await? else {
            return Ok(pb::DeleteVolumeResponse {});
        };
        if let Some(v) = v {
            match self.client.delete(id.0, &v.keys.owner).await {
                Ok(()) | Err(RemoteError::Refused(Code::NotFound, _)) => {}
                Err(e) => return Err(remote_error("deleting the volume's chain", e)),
            }
        }
        // The keys go last: without them the chain could never be deleted.
        self.store.delete(&name).await.map_err(store_error)?;
        tracing::info!(%name, volume = %id, "volume deleted");
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

    async fn controller_get_capabilities(
        &self,
        _req: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use pb::controller_service_capability::{rpc::Type, Rpc, Type as Cap};
        crate::metrics::observe(&self.metrics, "ControllerGetCapabilities", async {
            Ok(pb::ControllerGetCapabilitiesResponse {
                capabilities: [Type::CreateDeleteVolume, Type::ExpandVolume]
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
