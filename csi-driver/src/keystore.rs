//! Where the controller keeps each volume's key envelope: a Kubernetes Secret per volume (what
//! the StorageClass hands to NodeStageVolume), or files in a directory (development and tests
//! without an API server). Records are found by the CSI volume name (CreateVolume's idempotency
//! key) and by volume id (DeleteVolume's only argument).

use crate::volume_id::{envelope_from_hex, envelope_to_hex, EnvelopeError, VolumeId, KEY_ENVELOPE};
use ate::KeyFile;
use std::collections::BTreeMap;
use std::path::PathBuf;
use thiserror::Error;

/// Label naming a Secret's volume id.
pub const VOLUME_ID_LABEL: &str = "csi.atefs.io/volume-id";
/// Label naming a snapshot Secret's snapshot id.
pub const SNAPSHOT_ID_LABEL: &str = "csi.atefs.io/snapshot-id";
/// Label naming the volume id a pending rekey's Secret holds new keys for.
pub const REKEY_OF_LABEL: &str = "csi.atefs.io/rekey-of";
/// Secret entry holding the volume's capacity in bytes.
pub const CAPACITY: &str = "capacityBytes";
/// Secret entry of a snapshot: the volume it was taken from.
const SOURCE: &str = "sourceVolumeId";
/// Secret entry of a snapshot: when it was taken (Unix seconds).
const CREATED: &str = "createdAt";

/// A volume, or a snapshot (a chain no one mounts), as the controller keeps it.
#[derive(Clone, Debug)]
pub struct StoredVolume {
    /// Its keys (the chain id is the volume or snapshot id).
    pub keys: KeyFile,
    /// The capacity it was created with (its chain's quota); a snapshot's, its source's.
    pub capacity: u64,
    /// A snapshot's source volume and when it was taken (Unix seconds).
    pub snapshot_of: Option<(String, i64)>,
}

/// What a store keeps: they never share Secrets (the orphan sweep and the status checks
/// look at volume Secrets only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Records {
    /// Volumes: `atefs-NAME`, labelled with the volume id.
    Volumes,
    /// Snapshots: `atefs-snap-NAME`, labelled with the snapshot id.
    Snapshots,
    /// A volume's new keys while its keys are being changed (`crate::rekey`):
    /// `atefs-rekey-NAME`, labelled with the volume id.
    Rekeys,
}

impl Records {
    fn id_label(self) -> &'static str {
        match self {
            Records::Volumes => VOLUME_ID_LABEL,
            Records::Snapshots => SNAPSHOT_ID_LABEL,
            Records::Rekeys => REKEY_OF_LABEL,
        }
    }
    fn name_annotation(self) -> &'static str {
        match self {
            Records::Volumes => "csi.atefs.io/volume-name",
            Records::Snapshots => "csi.atefs.io/snapshot-name",
            Records::Rekeys => "csi.atefs.io/rekey-name",
        }
    }
    /// The record (Secret, file) name of `name`.
    pub fn record_name(self, name: &str) -> String {
        match self {
            Records::Volumes => record_name(name),
            Records::Snapshots => record_name(&format!("snap-{name}")),
            Records::Rekeys => record_name(&format!("rekey-{name}")),
        }
    }
}

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The Kubernetes API.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The key directory.
    #[error("key directory: {0}")]
    Io(#[from] std::io::Error),
    /// A record that is not a volume's.
    #[error("{0} is not a valid atefs volume record: {1}")]
    Invalid(String, String),
}

/// A store of volume records.
#[tonic::async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug + 'static {
    /// The record of the volume named `name`.
    async fn get(&self, name: &str) -> Result<Option<StoredVolume>, StoreError>;
    /// Creates the record of `name`; false if one exists already (a racing call made it).
    async fn create(&self, name: &str, v: &StoredVolume) -> Result<bool, StoreError>;
    /// The name of the record of volume `id`.
    async fn find(&self, id: &VolumeId) -> Result<Option<String>, StoreError>;
    /// Removes the record of `name` (absent is fine).
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Every record, by name; one that does not decode is left out (and logged).
    async fn list(&self) -> Result<Vec<(String, StoredVolume)>, StoreError>;
}

/// The Secret of volume `name`: `atefs-NAME` when that is a valid object name (external-
/// provisioner's names, `pvc-UID`, are), so that a StorageClass can name it as
/// `atefs-${pv.name}`; otherwise a digest of the name.
pub fn record_name(name: &str) -> String {
    let plain = format!("atefs-{name}");
    let valid = plain.len() <= 253
        && plain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && plain.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        plain
    } else {
        format!("atefs-{}", &blake3::hash(name.as_bytes()).to_hex()[..32])
    }
}

fn encode(v: &StoredVolume) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([
        (
            KEY_ENVELOPE.to_string(),
            envelope_to_hex(&v.keys).to_string(),
        ),
        (CAPACITY.to_string(), v.capacity.to_string()),
    ]);
    if let Some((source, created)) = &v.snapshot_of {
        m.insert(SOURCE.to_string(), source.clone());
        m.insert(CREATED.to_string(), created.to_string());
    }
    m
}

fn decode(what: &str, data: &BTreeMap<String, String>) -> Result<StoredVolume, StoreError> {
    let bad = |why: &str| StoreError::Invalid(what.to_string(), why.to_string());
    let hex = data
        .get(KEY_ENVELOPE)
        .ok_or_else(|| bad("no key envelope"))?;
    let keys = envelope_from_hex(hex).map_err(|e| match e {
        EnvelopeError::NotHex => bad("key envelope not hex"),
        EnvelopeError::Invalid(e) => bad(&e.to_string()),
    })?;
    let capacity = data
        .get(CAPACITY)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no capacity"))?;
    let snapshot_of = match (data.get(SOURCE), data.get(CREATED)) {
        (Some(source), Some(created)) => Some((
            source.clone(),
            created.parse().map_err(|_| bad("createdAt not a number"))?,
        )),
        _ => None,
    };
    Ok(StoredVolume {
        keys,
        capacity,
        snapshot_of,
    })
}

/// Records as Secrets of one namespace.
#[derive(Clone)]
pub struct SecretStore {
    api: kube::Api<k8s_openapi::api::core::v1::Secret>,
    records: Records,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretStore")
    }
}

impl SecretStore {
    /// Volume Secrets in `namespace`, through `client`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self::of(client, namespace, Records::Volumes)
    }

    /// `records` as Secrets in `namespace`, through `client`.
    pub fn of(client: kube::Client, namespace: &str, records: Records) -> Self {
        Self {
            api: kube::Api::namespaced(client, namespace),
            records,
        }
    }

    /// The CO's name of the volume or snapshot Secret `s` is the record of.
    fn name_of(&self, s: &k8s_openapi::api::core::v1::Secret) -> Option<String> {
        s.metadata
            .annotations
            .as_ref()?
            .get(self.records.name_annotation())
            .cloned()
    }
}

fn string_data(s: &k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

#[tonic::async_trait]
impl KeyStore for SecretStore {
    async fn get(&self, name: &str) -> Result<Option<StoredVolume>, StoreError> {
        let n = self.records.record_name(name);
        match self.api.get_opt(&n).await? {
            Some(s) => Ok(Some(decode(&format!("Secret {n}"), &string_data(&s))?)),
            None => Ok(None),
        }
    }

    async fn create(&self, name: &str, v: &StoredVolume) -> Result<bool, StoreError> {
        use k8s_openapi::api::core::v1::Secret;
        use kube::api::ObjectMeta;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.records.record_name(name)),
                labels: Some(BTreeMap::from([
                    (self.records.id_label().to_string(), v.keys.chain.to_hex()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "atefs-csi".to_string(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([(
                    self.records.name_annotation().to_string(),
                    name.to_string(),
                )])),
                ..Default::default()
            },
            string_data: Some(encode(v)),
            type_: Some("Opaque".to_string()),
            immutable: Some(true),
            ..Default::default()
        };
        match self.api.create(&Default::default(), &secret).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn find(&self, id: &VolumeId) -> Result<Option<String>, StoreError> {
        let label = self.records.id_label();
        let lp = kube::api::ListParams::default().labels(&format!("{label}={id}"));
        let list = self.api.list(&lp).await?;
        Ok(list.items.iter().find_map(|s| self.name_of(s)))
    }

    async fn list(&self) -> Result<Vec<(String, StoredVolume)>, StoreError> {
        let lp = kube::api::ListParams::default().labels(self.records.id_label());
        let mut out = Vec::new();
        for s in self.api.list(&lp).await?.items {
            let secret = s.metadata.name.clone().unwrap_or_default();
            let Some(name) = self.name_of(&s) else {
                continue;
            };
            match decode(&format!("Secret {secret}"), &string_data(&s)) {
                Ok(v) => out.push((name, v)),
                Err(e) => {
                    tracing::warn!(%secret, error = %e, "a record that does not decode is left out")
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self
            .api
            .delete(&self.records.record_name(name), &Default::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Creates `dir` and its missing parents with mode 0700 (only their owner may enter: they hold
/// key envelopes), and sets 0700 on `dir` should it exist already.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Records as files (mode 0600) in a directory: one per volume, named as its Secret would be.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Records in `dir` (created, mode 0700).
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    fn read(&self, path: &std::path::Path) -> Result<Option<(String, StoredVolume)>, StoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let data: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let name = data.get("name").cloned().unwrap_or_default();
        Ok(Some((name, decode(&path.display().to_string(), &data)?)))
    }
}

#[tonic::async_trait]
impl KeyStore for DirStore {
    async fn get(&self, name: &str) -> Result<Option<StoredVolume>, StoreError> {
        Ok(self
            .read(&self.dir.join(record_name(name)))?
            .map(|(_, v)| v))
    }

    async fn create(&self, name: &str, v: &StoredVolume) -> Result<bool, StoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(record_name(name));
        let tmp = path.with_extension("tmp");
        let mut text = format!("name={name}\n");
        for (k, val) in encode(v) {
            text.push_str(&format!("{k}={val}\n"));
        }
        let text = zeroize::Zeroizing::new(text);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        // A hard link fails if a racing call created the record first; rename would replace it.
        let linked = std::fs::hard_link(&tmp, &path);
        std::fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn find(&self, id: &VolumeId) -> Result<Option<String>, StoreError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|(_, v)| v.keys.chain == id.0)
            .map(|(name, _)| name))
    }

    async fn list(&self) -> Result<Vec<(String, StoredVolume)>, StoreError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "tmp") || e.file_type()?.is_dir() {
                continue;
            }
            match self.read(&p) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "a record that does not decode is left out")
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.dir.join(record_name(name))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
