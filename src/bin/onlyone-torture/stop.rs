//! The one flag that ends a run, and why; threads wait on it instead of
//! sleeping, so that a stop wakes them at once.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The time bound (`--seconds`) passed.
    Deadline,
    /// `--acquisitions` were reached.
    Target,
    /// SIGINT, SIGTERM or SIGHUP.
    Interrupted,
    /// The run cannot go on (say, the onlyone binary cannot be started).
    Failed(String),
}

#[derive(Debug, Default)]
pub struct Stop {
    reason: Mutex<Option<StopReason>>,
    changed: Condvar,
}

impl Stop {
    fn state(&self) -> MutexGuard<'_, Option<StopReason>> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the run; only the first reason is kept.
    pub fn stop(&self, reason: StopReason) {
        let mut state = self.state();
        if state.is_none() {
            *state = Some(reason);
            self.changed.notify_all();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.state().is_some()
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.state().clone()
    }

    /// Waits until the run stops or `at` comes; true when it stopped.
    pub fn wait_until(&self, at: Instant) -> bool {
        let mut state = self.state();
        while state.is_none() {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}
