//! The agent's record of the mount daemons it runs, so that the next agent can take them
//! over (`atefs take-over`) instead of letting them die with this agent's container.
//!
//! One JSON file per mount in the registry directory (the node's state directory, shared by
//! both agents' pods during a rolling update), beside the daemon's handover socket. Each
//! record names the agent that runs the daemon by its start time: an agent takes over only
//! the daemons of agents started before it, so the old agent never takes back what the new
//! one took.

use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// One daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its mount point.
    pub dir: PathBuf,
    /// Its handover socket.
    pub socket: PathBuf,
    /// Where its pid is kept (the plugin's WaitExit reads it).
    pub pid_file: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// The agent running it: that agent's start time (ns since the epoch).
    pub agent: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    started: u64,
}

impl Registry {
    /// The registry in `dir` (created, mode 0700), for an agent starting now.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut r = Self {
            dir: dir.to_path_buf(),
            started: now,
        };
        // Later than every agent recorded, whatever the clock did.
        let newest = r.entries().iter().map(|e| e.agent).max().unwrap_or(0);
        r.started = r.started.max(newest.saturating_add(1));
        Ok(r)
    }

    /// This agent's mark.
    pub fn agent(&self) -> u64 {
        self.started
    }

    fn name(mount: &Path) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        mount.hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// The handover socket for the daemon of `mount` (a short path: sockets are limited to
    /// 108 bytes).
    pub fn socket_for(&self, mount: &Path) -> PathBuf {
        self.dir.join(format!("{}.sock", Self::name(mount)))
    }

    fn record_path(&self, mount: &Path) -> PathBuf {
        self.dir.join(format!("{}.json", Self::name(mount)))
    }

    /// Records `e` as this agent's (written whole, then renamed into place).
    pub fn record(&self, mut e: Entry) -> std::io::Result<()> {
        e.agent = self.started;
        let path = self.record_path(&e.dir);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&e).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &path)
    }

    /// The record of the daemon of `mount`, if any.
    pub fn get(&self, mount: &Path) -> Option<Entry> {
        let bytes = std::fs::read(self.record_path(mount)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forgets the daemon of `mount` if it is this agent's (one taken over by a newer agent
    /// is that agent's to forget).
    pub fn forget(&self, mount: &Path) {
        if self.get(mount).is_some_and(|e| e.agent == self.started) {
            let _ = std::fs::remove_file(self.record_path(mount));
            let _ = std::fs::remove_file(self.socket_for(mount));
        }
    }

    /// Forgets a daemon that is gone, whoever ran it.
    pub fn forget_gone(&self, e: &Entry) {
        let _ = std::fs::remove_file(self.record_path(&e.dir));
        let _ = std::fs::remove_file(&e.socket);
    }

    /// Every record (unreadable ones are logged and skipped).
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for f in dir.flatten() {
            let p = f.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
            {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::warn!(record = %p.display(), error = %e, "unreadable daemon record skipped")
                }
            }
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        out
    }

    /// The daemons of agents started before this one: this one's to take over.
    pub fn older(&self) -> Vec<Entry> {
        self.entries()
            .into_iter()
            .filter(|e| e.agent < self.started)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(dir: &str) -> Entry {
        Entry {
            dir: dir.into(),
            socket: PathBuf::new(),
            pid_file: "/p".into(),
            log: "/l".into(),
            agent: 0,
        }
    }

    #[test]
    fn a_newer_agent_sees_the_older_ones_daemons_and_not_the_reverse() {
        let tmp = tempfile::tempdir().unwrap();
        let old = Registry::open(tmp.path()).unwrap();
        old.record(entry("/a")).unwrap();
        old.record(entry("/b")).unwrap();
        std::fs::write(tmp.path().join("junk.json"), b"{not json").unwrap();
        let new = Registry::open(tmp.path()).unwrap();
        assert!(new.agent() > old.agent());
        let older = new.older();
        assert_eq!(
            older.iter().map(|e| e.dir.clone()).collect::<Vec<_>>(),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        // The new agent takes /a over; the old one no longer sees it as its own.
        new.record(entry("/a")).unwrap();
        assert!(old.older().is_empty());
        old.forget(Path::new("/a"));
        assert_eq!(new.get(Path::new("/a")).unwrap().agent, new.agent());
        old.forget(Path::new("/b"));
        assert!(new.get(Path::new("/b")).is_none());
    }
}
