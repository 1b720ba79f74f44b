//! Ending an acquisition under way from another thread: the Python
//! package waits in a thread of its own, and Ctrl-C or a cancelled task
//! must end that wait at once, not when the server grants the lock or the
//! lock-delay has passed. A [`Cancel`] is put in effect for one thread's
//! acquisition ([`Cancel::run`]); its [`Cancel::cancel`] sends the cancel
//! request of the session waiting in the server (the pool's way of ending
//! waits) and ends a lock-delay under way, whose lock is then given up as
//! when a lock-delay reaches its bound.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::session::Canceller;
use crate::backend::LossWatch;
use crate::error::{Error, Result};

/// How often a cancel request is sent again while the wait it is for runs
/// on (a request that reaches a session between two statements is
/// ignored), and for how long.
const RESEND_EVERY: Duration = Duration::from_millis(100);
const RESEND_FOR: Duration = Duration::from_secs(2);

/// Why a cancelled lock-delay ended.
const CANCELLED: &str = "the acquisition was cancelled";

thread_local! {
    /// The cancel in effect for this thread's acquisition.
    static CURRENT: RefCell<Option<Cancel>> = const { RefCell::new(None) };
}

/// A way to end, from another thread, the PostgreSQL acquisitions made
/// under [`Cancel::run`]. Not part of the API (see `onlyone::internals`).
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    cancelled: bool,
    next_id: u64,
    /// The server waits under way, by registration.
    waits: Vec<(u64, Canceller)>,
    /// The lock-delays under way: a loss ends them.
    delays: Vec<(u64, LossWatch)>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("cancelled", &self.cancelled)
            .field("waits", &self.waits.len())
            .field("delays", &self.delays.len())
            .finish()
    }
}

impl Cancel {
    /// A cancel not yet used.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Runs `acquire` (an acquisition through a PostgreSQL backend) with
    /// this cancel in effect in this thread.
    pub fn run<T>(&self, acquire: impl FnOnce() -> T) -> T {
        struct Restore(Option<Cancel>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|current| *current.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|current| current.borrow_mut().replace(self.clone()));
        let _restore = Restore(previous);
        acquire()
    }

    /// Ends the acquisition: a lock-delay under way ends (its lock given
    /// up), a wait in the server is cancelled, and nothing new starts.
    /// Returns once the server waits under way have ended, or after 2 s
    /// of cancel requests.
    pub fn cancel(&self) {
        let mut state = self.0.state();
        state.cancelled = true;
        for (_, loss) in &state.delays {
            loss.fire(CANCELLED);
        }
        let give_up = Instant::now().checked_add(RESEND_FOR);
        while !state.waits.is_empty() && give_up.is_none_or(|at| Instant::now() < at) {
            let cancellers: Vec<Canceller> = state.waits.iter().map(|(_, c)| c.clone()).collect();
            drop(state);
            for canceller in cancellers {
                canceller.cancel();
            }
            state = self.0.state();
            state = self
                .0
                .changed
                .wait_timeout_while(state, RESEND_EVERY, |state| !state.waits.is_empty())
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.state().cancelled
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A wait or lock-delay registered with the thread's cancel, until dropped.
pub(super) struct Registration(Option<(Cancel, u64)>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some((cancel, id)) = self.0.take() {
            let mut state = cancel.0.state();
            state.waits.retain(|(other, _)| *other != id);
            state.delays.retain(|(other, _)| *other != id);
            drop(state);
            cancel.0.changed.notify_all();
        }
    }
}

fn current() -> Option<Cancel> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Fails when this thread's acquisition was cancelled.
pub(super) fn check() -> Result<()> {
    match current().is_some_and(|cancel| cancel.is_cancelled()) {
        true => Err(Error::unavailable(CANCELLED)),
        false => Ok(()),
    }
}

/// Registers a wait in the server, which a cancel ends with `canceller`.
///
/// # Errors
///
/// The acquisition was cancelled already.
pub(super) fn wait_in_server(canceller: Canceller) -> Result<Registration> {
    register(|state, id| state.waits.push((id, canceller)))
}

/// Registers a lock-delay, which a cancel ends by firing `loss`; fired at
/// once when the acquisition was cancelled already.
pub(super) fn lock_delay(loss: LossWatch) -> Registration {
    let Some(cancel) = current() else {
        return Registration(None);
    };
    let mut state = cancel.0.state();
    if state.cancelled {
        loss.fire(CANCELLED);
        return Registration(None);
    }
    let id = state.next_id;
    state.next_id += 1;
    state.delays.push((id, loss));
    drop(state);
    Registration(Some((cancel, id)))
}

fn register(add: impl FnOnce(&mut State, u64)) -> Result<Registration> {
    let Some(cancel) = current() else {
        return Ok(Registration(None));
    };
    let mut state = cancel.0.state();
    if state.cancelled {
        return Err(Error::unavailable(CANCELLED));
    }
    let id = state.next_id;
    state.next_id += 1;
    add(&mut state, id);
    drop(state);
    Ok(Registration(Some((cancel, id))))
}
