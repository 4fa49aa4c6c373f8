//! The CSI Identity service.

use crate::pb;
use tonic::{Request, Response, Status};

/// The driver's name: the `provisioner` of the StorageClass and the CSIDriver object's name.
pub const DRIVER_NAME: &str = "csi.atefs.io";

/// The Identity service.
#[derive(Debug, Default)]
pub struct IdentityService {
    /// Whether this process also serves the Controller service.
    pub controller: bool,
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        use pb::plugin_capability::VolumeExpansion;
        use pb::plugin_capability::{service, volume_expansion, Service, Type as Cap};
        let capabilities = if self.controller {
            vec![
                pb::PluginCapability {
                    r#type: Some(Cap::Service(Service {
                        r#type: service::Type::ControllerService.into(),
                    })),
                },
                // A mounted volume follows its chain's quota (atefs::quota).
                pb::PluginCapability {
                    r#type: Some(Cap::VolumeExpansion(VolumeExpansion {
                        r#type: volume_expansion::Type::Online.into(),
                    })),
                },
            ]
        } else {
            vec![]
        };
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        Ok(Response::new(pb::ProbeResponse { ready: Some(true) }))
    }
}
