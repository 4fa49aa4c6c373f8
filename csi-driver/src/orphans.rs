//! Collects orphaned volumes: a volume's Secret whose PersistentVolume no longer exists (deleted
//! by hand, or its claim deleted while the provisioner was between CreateVolume and creating the
//! PV). Its chain is deleted with the keys the Secret holds, then the Secret. A Secret younger
//! than a grace period is left alone: its PV may not exist *yet*.

use crate::keystore::{StoreError, VOLUME_ID_LABEL};
use ate::remote::{RemoteClient, RemoteError};
use ate::{ChainId, SigningKey};
use k8s_openapi::api::core::v1::{PersistentVolume, Secret};
use kube::api::{Api, ListParams};
use std::time::Duration;

/// Deletes chains (the chain servers; a recording fake in tests of the sweep's decisions).
#[tonic::async_trait]
pub trait ChainDeleter: Send + Sync {
    /// Deletes `chain`, proving `owner`; a chain that is already gone is fine.
    async fn delete_chain(&self, chain: ChainId, owner: &SigningKey) -> Result<(), RemoteError>;
}

#[tonic::async_trait]
impl ChainDeleter for RemoteClient {
    async fn delete_chain(&self, chain: ChainId, owner: &SigningKey) -> Result<(), RemoteError> {
        match self.delete(chain, owner).await {
            Err(RemoteError::Refused(tonic::Code::NotFound, _)) => Ok(()),
            r => r,
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Volume Secrets looked at.
    pub seen: usize,
    /// Orphans deleted (chain and Secret).
    pub collected: Vec<String>,
    /// Orphans whose deletion failed (retried next sweep).
    pub failed: usize,
}

/// The collector.
#[derive(Clone)]
pub struct OrphanCollector {
    secrets: Api<Secret>,
    pvs: Api<PersistentVolume>,
    grace: Duration,
}

impl std::fmt::Debug for OrphanCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrphanCollector")
            .field("grace", &self.grace)
            .finish()
    }
}

impl OrphanCollector {
    /// Volume Secrets of `namespace`; orphans older than `grace` are collected.
    pub fn new(client: kube::Client, namespace: &str, grace: Duration) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), namespace),
            pvs: Api::all(client),
            grace,
        }
    }

    /// One pass over the volume Secrets.
    pub async fn sweep(&self, chains: &dyn ChainDeleter) -> Result<Sweep, StoreError> {
        let list = self
            .secrets
            .list(&ListParams::default().labels(VOLUME_ID_LABEL))
            .await?;
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut out = Sweep::default();
        for s in list.items {
            out.seen += 1;
            let Some(secret_name) = s.metadata.name.clone() else {
                continue;
            };
            let Some(volume) = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("csi.atefs.io/volume-name"))
                .cloned()
            else {
                continue;
            };
            let young =
                s.metadata.creation_timestamp.as_ref().is_none_or(|t| {
                    now.as_second() - t.0.as_second() < self.grace.as_secs() as i64
                });
            if young || self.pvs.get_opt(&volume).await?.is_some() {
                continue;
            }
            let keys = s
                .data
                .as_ref()
                .and_then(|d| d.get(crate::volume_id::KEY_ENVELOPE))
                .and_then(|v| std::str::from_utf8(&v.0).ok())
                .and_then(|hex| crate::volume_id::envelope_from_hex(hex).ok());
            let Some(keys) = keys else {
                tracing::warn!(secret = %secret_name, "orphaned volume Secret without a valid key envelope; left for an operator");
                out.failed += 1;
                continue;
            };
            if let Err(e) = chains.delete_chain(keys.chain, &keys.owner).await {
                tracing::warn!(volume = %volume, error = %e, "could not delete an orphaned volume's chain; retrying next sweep");
                out.failed += 1;
                continue;
            }
            match self.secrets.delete(&secret_name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(st)) if st.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(volume = %volume, chain = %keys.chain, "collected an orphaned volume (its PersistentVolume is gone)");
            out.collected.push(volume);
        }
        Ok(out)
    }
}
