//! A blocking multi-producer queue whose consumer takes everything waiting at once.
//!
//! Channels spin and yield before they park; with dozens of committing threads on two cores
//! that spinning takes the CPU the signature checks need. This queue parks at once.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// The queue. Closing it wakes the consumer, which then drains what is left.
#[derive(Debug)]
pub(crate) struct BatchQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> BatchQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Adds an item; gives it back if the queue is closed.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(item);
        }
        s.items.push_back(item);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Waits for at least one item and takes up to `max` items whose `weight` sums below
    /// `max_weight` (at least one). None once closed and empty.
    pub(crate) fn pop_batch(
        &self,
        max: usize,
        max_weight: usize,
        weight: impl Fn(&T) -> usize,
    ) -> Option<Vec<T>> {
        let mut s = self.state.lock();
        while s.items.is_empty() {
            if s.closed {
                return None;
            }
            self.ready.wait(&mut s);
        }
        let mut out = Vec::with_capacity(s.items.len().min(max));
        let mut w = 0;
        while let Some(item) = s.items.pop_front() {
            w += weight(&item);
            out.push(item);
            if out.len() >= max || w >= max_weight {
                break;
            }
        }
        Some(out)
    }

    /// Takes whatever is waiting, without waiting.
    pub(crate) fn take_all(&self) -> Vec<T> {
        self.state.lock().items.drain(..).collect()
    }

    /// True once closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Refuses further pushes and wakes the consumer.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}
