//! Calls in progress, by what they work on: a second call for the same volume while one runs
//! gets ABORTED, the CSI spec's answer (the CO retries).

use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use tonic::Status;

/// The keys with a call in progress.
#[derive(Debug, Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Holds a key for the length of a call.
#[derive(Debug)]
pub struct Claim {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims `key` (e.g. "volume ID"), or ABORTED if a call holds it.
    pub fn claim(&self, key: String) -> Result<Claim, Status> {
        if !self.0.lock().insert(key.clone()) {
            return Err(Status::aborted(format!(
                "an operation on {key} is in progress"
            )));
        }
        Ok(Claim {
            set: self.0.clone(),
            key,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}
