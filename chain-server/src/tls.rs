//! TLS for both listeners. Clients check the server certificate against the cluster CA;
//! replicas also present their certificate to each other (mutual TLS on the Raft transport).
//! Every certificate names [`SERVER_NAME`], and clients ask for that name whatever address
//! they dial, so that pods can move between addresses without new certificates.

use std::path::Path;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

/// The name every chain-server certificate carries.
pub const SERVER_NAME: &str = "atefs-chain-server";

/// TLS material, or plaintext (only behind an explicit flag).
#[derive(Clone, Debug)]
pub struct Tls {
    material: Option<Material>,
}

#[derive(Clone, Debug)]
struct Material {
    ca: Certificate,
    identity: Identity,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// An endpoint could not be configured.
    #[error("endpoint {addr}: {source}")]
    Endpoint {
        /// Address.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Tls {
    /// No TLS at all.
    pub fn plaintext() -> Self {
        Self { material: None }
    }

    /// Loads `ca.pem`, `server.pem` and `server.key` from `dir` (see [`generate`]).
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let ca = Certificate::from_pem(read(&dir.join("ca.pem"))?);
        let identity = Identity::from_pem(
            read(&dir.join("server.pem"))?,
            read(&dir.join("server.key"))?,
        );
        Ok(Self {
            material: Some(Material { ca, identity }),
        })
    }

    /// Whether connections are encrypted.
    pub fn enabled(&self) -> bool {
        self.material.is_some()
    }

    /// A lazily connecting channel to a peer's Raft service (presents our certificate), from
    /// `source` when given.
    pub fn channel(
        &self,
        addr: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Channel, TlsError> {
        let err = |source| TlsError::Endpoint {
            addr: addr.to_string(),
            source,
        };
        let scheme = if self.enabled() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(err)?
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
            .local_address(source);
        if let Some(m) = &self.material {
            ep = ep
                .tls_config(
                    ClientTlsConfig::new()
                        .domain_name(SERVER_NAME)
                        .ca_certificate(m.ca.clone())
                        .identity(m.identity.clone()),
                )
                .map_err(err)?;
        }
        Ok(ep.connect_lazy())
    }

    /// The Raft listener's config: our certificate, and peers must present one of the CA's.
    pub fn raft_server(&self) -> Option<ServerTlsConfig> {
        self.material.as_ref().map(|m| {
            ServerTlsConfig::new()
                .identity(m.identity.clone())
                .client_ca_root(m.ca.clone())
        })
    }

    /// The client API listener's config (clients are authenticated by their signatures).
    pub fn api_server(&self) -> Option<ServerTlsConfig> {
        self.material
            .as_ref()
            .map(|m| ServerTlsConfig::new().identity(m.identity.clone()))
    }
}

/// Writes a new cluster CA (`ca.pem`, `ca.key`) and a server certificate signed by it
/// (`server.pem`, `server.key`, naming [`SERVER_NAME`] and `names`) into `dir`; keys 0600.
pub fn generate(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let write = |name: &str, data: &str, secret: bool| -> Result<(), TlsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if secret {
            opts.mode(0o600);
        }
        let err = |source| TlsError::Read {
            path: path.display().to_string(),
            source,
        };
        let mut f = opts.open(&path).map_err(err)?;
        std::io::Write::write_all(&mut f, data.as_bytes()).map_err(err)
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "atefs cluster CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let mut sans = vec![SERVER_NAME.to_string()];
    sans.extend(names.iter().cloned());
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(sans)?;
    let cert = params.signed_by(&key, &issuer)?;
    write("ca.pem", &ca_cert.pem(), false)?;
    write("ca.key", &ca_key.serialize_pem(), true)?;
    write("server.pem", &cert.pem(), false)?;
    write("server.key", &key.serialize_pem(), true)?;
    Ok(())
}
