//! The unix sockets the node components serve gRPC on (kubelet's CSI socket, the agent's).

use std::path::PathBuf;

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Not `unix:///absolute/path` or an absolute path.
    #[error("endpoint {0}: give unix:///absolute/path")]
    NotAbsolute(String),
    /// Creating the directory, removing a stale socket, or binding failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The path of `unix:///path` (or of a bare absolute path).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, SocketError> {
    let p = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !p.starts_with('/') {
        return Err(SocketError::NotAbsolute(endpoint.to_string()));
    }
    Ok(PathBuf::from(p))
}

/// Listens on `path`: its directory created, and a socket an earlier instance left there (the
/// path is kept across restarts) removed first. Must be called within a tokio runtime.
pub fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener, SocketError> {
    let io = |what, source| SocketError::Io {
        what,
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", e)),
    }
    tokio::net::UnixListener::bind(path).map_err(|e| io("listening on", e))
}

/// Which file `path` is now (device and inode), to tell later whether it is still the same.
pub fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// True if `path` is still the file `bound` identified.
pub fn is_ours(path: &std::path::Path, bound: Option<(u64, u64)>) -> bool {
    bound.is_some() && identity(path) == bound
}

/// Says on stdout that the server listens on `path` (the line tests and scripts wait for).
pub fn announce_ready(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", path.display())?;
    out.flush()
}

/// Resolves at SIGINT or SIGTERM (a graceful stop). Must be called within a tokio runtime.
pub fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}
