//! Reports volumes in trouble where their users look: a Warning Event on the claim of each
//! atefs PersistentVolume whose keys Secret is gone (its data can never be read again), whose
//! chain the chain servers no longer have, or which is nearly full. The controller runs a check
//! with every orphan sweep; `atefs_csi_volume_problems` counts what the last one found.

use crate::keystore::{StoreError, VOLUME_ID_LABEL};
use ate::remote::{RemoteClient, RemoteError};
use ate::ChainId;
use k8s_openapi::api::core::v1::{Event, ObjectReference, PersistentVolume, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use std::collections::BTreeSet;

/// A volume used this share of its quota or more is nearly full.
pub const NEARLY_FULL: f64 = 0.9;

/// A chain's usage (the chain servers; a fake in tests).
#[tonic::async_trait]
pub trait ChainUsage: Send + Sync {
    /// (bytes used, quota) of `chain`, or None when the servers do not have it.
    async fn usage(&self, chain: ChainId) -> Result<Option<(u64, u64)>, RemoteError>;
}

#[tonic::async_trait]
impl ChainUsage for RemoteClient {
    async fn usage(&self, chain: ChainId) -> Result<Option<(u64, u64)>, RemoteError> {
        match self.info(chain).await {
            Ok(i) => Ok(Some((i.used_bytes, i.quota_bytes))),
            Err(RemoteError::Refused(tonic::Code::NotFound, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Every [`Problem::reason`].
pub const REASONS: [&str; 3] = [
    "VolumeKeysMissing",
    "VolumeChainMissing",
    "VolumeNearlyFull",
];

/// What is wrong with a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Its Secret (the keys) is gone.
    KeysMissing,
    /// The chain servers do not have its chain.
    ChainMissing,
    /// It holds `used` of `quota` bytes.
    NearlyFull {
        /// Bytes held.
        used: u64,
        /// Its size.
        quota: u64,
    },
}

impl Problem {
    /// The Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::KeysMissing => "VolumeKeysMissing",
            Problem::ChainMissing => "VolumeChainMissing",
            Problem::NearlyFull { .. } => "VolumeNearlyFull",
        }
    }

    fn message(&self, pv: &str) -> String {
        match self {
            Problem::KeysMissing => format!(
                "the Secret holding volume {pv}'s keys is gone: its data cannot be read; restore the Secret from a backup (docs/operations.md)"
            ),
            Problem::ChainMissing => format!(
                "the chain servers do not have volume {pv}'s chain: its data is gone"
            ),
            Problem::NearlyFull { used, quota } => format!(
                "volume {pv} holds {used} of {quota} bytes; writes fail with ENOSPC when it is full: raise the claim's size"
            ),
        }
    }
}

/// A volume in trouble, and the claim its users see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The PersistentVolume.
    pub pv: String,
    /// What is wrong.
    pub problem: Problem,
    /// Its claim (namespace, name, uid), if bound.
    pub claim: Option<(String, String, String)>,
}

/// The checker.
#[derive(Clone)]
pub struct StatusChecker {
    client: kube::Client,
    secrets: Api<Secret>,
    pvs: Api<PersistentVolume>,
    driver: String,
}

impl std::fmt::Debug for StatusChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusChecker")
            .field("driver", &self.driver)
            .finish()
    }
}

impl StatusChecker {
    /// Volumes of `driver`, their Secrets in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, driver: &str) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), namespace),
            pvs: Api::all(client.clone()),
            client,
            driver: driver.to_string(),
        }
    }

    /// Looks at every PersistentVolume of the driver.
    pub async fn check(&self, chains: &dyn ChainUsage) -> Result<Vec<Finding>, StoreError> {
        let keyed: BTreeSet<String> = self
            .secrets
            .list(&ListParams::default().labels(VOLUME_ID_LABEL))
            .await?
            .items
            .into_iter()
            .filter_map(|s| s.metadata.labels?.remove(VOLUME_ID_LABEL))
            .collect();
        let mut out = Vec::new();
        for pv in self.pvs.list(&ListParams::default()).await?.items {
            let Some(spec) = pv.spec.as_ref() else {
                continue;
            };
            let Some(csi) = spec.csi.as_ref().filter(|c| c.driver == self.driver) else {
                continue;
            };
            let Some(chain) = ChainId::from_hex(&csi.volume_handle) else {
                continue;
            };
            let problem = if !keyed.contains(&csi.volume_handle) {
                Some(Problem::KeysMissing)
            } else {
                match chains.usage(chain).await {
                    Ok(None) => Some(Problem::ChainMissing),
                    Ok(Some((used, quota)))
                        if quota > 0 && used as f64 >= NEARLY_FULL * quota as f64 =>
                    {
                        Some(Problem::NearlyFull { used, quota })
                    }
                    Ok(Some(_)) => None,
                    Err(e) => {
                        // Not the volume's fault; the chain servers' own health shows it.
                        tracing::debug!(volume = %chain, error = %e, "no usage for a volume");
                        None
                    }
                }
            };
            let Some(problem) = problem else {
                continue;
            };
            let claim = spec
                .claim_ref
                .as_ref()
                .and_then(|c| Some((c.namespace.clone()?, c.name.clone()?, c.uid.clone()?)));
            out.push(Finding {
                pv: pv.metadata.name.unwrap_or_default(),
                problem,
                claim,
            });
        }
        Ok(out)
    }

    /// Posts a Warning Event on each finding's claim (the volume itself when unbound is not
    /// reported: nobody uses it).
    pub async fn report(&self, findings: &[Finding]) -> Result<usize, StoreError> {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let mut posted = 0;
        for f in findings {
            let Some((ns, name, uid)) = &f.claim else {
                continue;
            };
            let event = Event {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}.")),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    uid: Some(uid.clone()),
                    ..Default::default()
                },
                reason: Some(f.problem.reason().into()),
                message: Some(f.problem.message(&f.pv)),
                type_: Some("Warning".into()),
                source: Some(k8s_openapi::api::core::v1::EventSource {
                    component: Some("atefs-csi".into()),
                    host: None,
                }),
                reporting_component: Some("csi.atefs.io/controller".into()),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now.clone()),
                count: Some(1),
                ..Default::default()
            };
            Api::<Event>::namespaced(self.client.clone(), ns)
                .create(&PostParams::default(), &event)
                .await?;
            posted += 1;
        }
        Ok(posted)
    }
}
