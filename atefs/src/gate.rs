//! The gate every kernel request passes on its way into the file system, so that a handover
//! (handover.rs) can stop taking requests without losing any.
//!
//! Closing the gate waits for the requests already inside to be answered; requests that
//! arrive afterwards wait at the gate, unanswered. If the handover then goes through, this
//! process ends with them still waiting and the kernel hands them to the next daemon
//! (`FUSE_NOTIFY_RESEND`); if it fails, the gate opens again and they are served here. Either
//! way each request is carried out once.

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    closed: bool,
    inside: usize,
    waiting: usize,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

/// A request inside the gate; leaving drops it.
#[must_use = "the request is inside only while this lives"]
#[derive(Debug)]
pub struct Inside<'a>(&'a Gate);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.inside -= 1;
        if st.inside == 0 {
            self.0.changed.notify_all();
        }
    }
}

impl Gate {
    /// Enters, waiting while the gate is closed.
    pub fn enter(&self) -> Inside<'_> {
        let mut st = self.state.lock();
        if st.closed {
            st.waiting += 1;
            while st.closed {
                self.changed.wait(&mut st);
            }
            st.waiting -= 1;
        }
        st.inside += 1;
        Inside(self)
    }

    /// Closes the gate and waits until no request is inside (at most `limit`). On timeout
    /// the gate is opened again and false returned.
    pub fn close(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let mut st = self.state.lock();
        st.closed = true;
        while st.inside > 0 {
            if self.changed.wait_until(&mut st, until).timed_out() && st.inside > 0 {
                st.closed = false;
                self.changed.notify_all();
                return false;
            }
        }
        true
    }

    /// How many requests wait at the gate.
    pub fn waiting(&self) -> usize {
        self.state.lock().waiting
    }

    /// Opens the gate: the requests waiting at it go in.
    pub fn open(&self) {
        self.state.lock().closed = false;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closing_waits_for_those_inside_and_holds_back_the_rest() {
        let gate = Arc::new(Gate::default());
        let inside = gate.enter();
        assert!(
            !gate.close(Duration::from_millis(50)),
            "a request is inside"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let closer = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let closed = gate.close(Duration::from_secs(30));
                tx.send(closed).unwrap();
            })
        };
        drop(inside);
        assert!(rx.recv().unwrap(), "closed once the request left");
        closer.join().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let _inside = gate.enter();
                tx.send(()).unwrap();
            })
        };
        while gate.waiting() == 0 {
            std::thread::yield_now();
        }
        assert!(
            rx.try_recv().is_err(),
            "a request went through a closed gate"
        );
        gate.open();
        rx.recv().unwrap();
        waiter.join().unwrap();
    }
}
