//! The backend trait and the guard it hands out. The supervisor and the
//! command-line tool only see these types, never files or SQL.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::name::LockName;
use crate::record::Record;

pub mod file;
#[cfg(feature = "postgres")]
pub mod postgres;

/// A place where locks live: a directory of lock files, or a database.
///
/// Implementations decide liveness only from the kernel or the database
/// server, never from a pid in a record.
pub trait Backend: Send + Sync + fmt::Debug {
    /// One attempt to take the lock `name` for a holder that will run
    /// `command` (recorded for others to see). Never waits.
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety.
    fn try_acquire(&self, name: &LockName, command: &[String]) -> Result<Attempt>;

    /// Waits until the lock is taken, or until `timeout` has passed (then
    /// [`Attempt::Held`]). `None` waits without limit. Waiting is done by
    /// the kernel or the server, not by polling.
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety.
    fn acquire(
        &self,
        name: &LockName,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<Attempt>;

    /// Whether `name` is held and by whom, found without taking the lock.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    fn status(&self, name: &LockName) -> Result<Status>;

    /// The status of every lock this backend knows of.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    fn list(&self) -> Result<Vec<Status>>;

    /// Takes the first free lock of `names` (the slots of a semaphore),
    /// waiting as [`Backend::acquire`] does when all are held. This default
    /// re-tries every 50 ms; backends with an event to wait for override
    /// it.
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety.
    fn acquire_any(
        &self,
        names: &[LockName],
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<Attempt> {
        let first = rounds(timeout, || (), nap, || first_free(self, names, command))?;
        Ok(first.map_or_else(Attempt::Held, Attempt::Acquired))
    }

    /// Asks the current holder of `name` to stop, identifying it exactly
    /// (never by matching names or command lines): `signal` goes to the
    /// holder's verified process, or the backend ends the holder's session.
    /// Returns false when the lock was free.
    ///
    /// # Errors
    ///
    /// The holder cannot be identified safely, or the backend cannot be
    /// used.
    fn stop_holder(&self, name: &LockName, signal: i32) -> Result<bool> {
        let _ = (name, signal);
        Err(crate::Error::unavailable(
            "this backend cannot stop a lock's holder",
        ))
    }

    /// Waits until `name` is free without taking it; false when `timeout`
    /// passed first. This default re-checks [`Backend::status`] every 50 ms;
    /// backends with an event to wait for override it.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    fn wait_free(&self, name: &LockName, timeout: Option<Duration>) -> Result<bool> {
        let free = rounds(timeout, || (), nap, || free_now(self, name))?;
        Ok(free.is_ok())
    }
}

/// What one round of a waiting loop found.
pub(crate) enum Round<T, P> {
    /// What was waited for.
    Done(T),
    /// Not yet; this is what to report if time runs out now.
    Pending(P),
}

/// Runs `round` until it is done, or until `timeout` has passed (then the
/// last round's pending value is the error). A watch is made before each
/// round, so that a change during the round is not missed, and `wait`
/// blocks on it between rounds for at most the time left.
pub(crate) fn rounds<T, P, W>(
    timeout: Option<Duration>,
    watch: impl Fn() -> W,
    wait: impl Fn(&W, Duration),
    mut round: impl FnMut() -> Result<Round<T, P>>,
) -> Result<std::result::Result<T, P>> {
    // A deadline too far away to represent is no deadline.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let watcher = watch();
        let pending = match round()? {
            Round::Done(done) => return Ok(Ok(done)),
            Round::Pending(pending) => pending,
        };
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Ok(Err(pending));
        }
        wait(&watcher, left.unwrap_or(Duration::MAX));
    }
}

/// Waiting without an event to wake up on: check again in 50 ms.
pub(crate) fn nap<W>(_: &W, left: Duration) {
    std::thread::sleep(left.min(Duration::from_millis(50)));
}

/// One try at each of `names`: the first taken, or the first holder seen.
pub(crate) fn first_free(
    backend: &(impl Backend + ?Sized),
    names: &[LockName],
    command: &[String],
) -> Result<Round<Guard, Holder>> {
    let mut first_holder = None;
    for name in names {
        match backend.try_acquire(name, command)? {
            Attempt::Acquired(guard) => return Ok(Round::Done(guard)),
            Attempt::Held(holder) => {
                first_holder.get_or_insert(holder);
            }
        }
    }
    Ok(Round::Pending(first_holder.unwrap_or_default()))
}

/// Whether `name` is free now, as a round of waiting for it.
pub(crate) fn free_now(
    backend: &(impl Backend + ?Sized),
    name: &LockName,
) -> Result<Round<(), ()>> {
    Ok(if backend.status(name)?.held {
        Round::Pending(())
    } else {
        Round::Done(())
    })
}

/// A lock held by a backend. [`Guard`] wraps it; implement this to add a
/// backend.
pub trait Held: Send + fmt::Debug {
    /// This holder's record, as written for others.
    fn record(&self) -> &Record;

    /// The fencing token, when it was durably recorded. A token that could
    /// not be persisted is not handed out, since a later holder could be
    /// given the same number.
    fn token(&self) -> Option<u64>;

    /// The name of the lock held.
    fn name(&self) -> &LockName;

    /// The backend's own variables for a child process, such as
    /// `ONLYONE_LOCK_FILE`, as `(variable, value)` pairs.
    fn env(&self) -> Vec<(String, String)>;

    /// Descriptors a child process must inherit so that the lock outlives
    /// the holder for as long as the child runs (the file backend); empty
    /// when the lock cannot be shared that way (a database session).
    fn inheritable_fds(&self) -> Vec<BorrowedFd<'_>>;

    /// The watch that fires when the lock is lost.
    fn loss(&self) -> &LossWatch;

    /// Releases the lock cleanly.
    ///
    /// # Errors
    ///
    /// Releasing failed; the lock is released anyway when the process
    /// exits or the session ends.
    fn release(self: Box<Self>) -> Result<()>;
}

/// The outcome of an attempt to take a lock.
#[derive(Debug)]
#[must_use = "a lock taken and dropped at once is released at once"]
// Made once per acquisition: the size of the held variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Attempt {
    /// The lock is ours until the guard is dropped.
    Acquired(Guard),
    /// Someone else holds it (or the wait timed out while they did).
    Held(Holder),
}

/// Who holds a lock, as far as can be told without taking it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Holder {
    /// The holder's record, when it could be read and parsed.
    pub record: Option<Record>,
    /// Process ids that the kernel or server reports as holding it.
    pub pids: Vec<u32>,
    /// Anything else the backend can tell (for example the database
    /// session's client address).
    pub detail: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.record {
            Some(record) => {
                write!(f, "{record}")?;
                if record.process_is_running_here() == Some(false) {
                    f.write_str(" [that process has exited; its descendants keep the lock]")?;
                }
            }
            None => {
                f.write_str("an unknown holder (no readable onlyone record)")?;
                if !self.pids.is_empty() {
                    let pids: Vec<_> = self.pids.iter().map(u32::to_string).collect();
                    write!(f, ", locked by pid {}", pids.join(", "))?;
                }
            }
        }
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// Whether a lock is held, and by whom.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The lock's name.
    pub name: String,
    /// Where the lock lives (a file path, or a database key).
    pub location: String,
    /// Whether it is held now.
    pub held: bool,
    /// The holder, when held.
    pub holder: Option<Holder>,
    /// The last fencing token handed out, when known.
    pub last_token: Option<u64>,
    /// Processes or sessions waiting for it, when the backend can see them.
    pub waiters: Vec<String>,
}

/// Fires once when a held lock is lost, with the reason.
#[derive(Clone, Default)]
pub struct LossWatch(Arc<(Mutex<LossState>, Condvar)>);

type LossCallback = Box<dyn FnOnce(String) + Send>;

#[derive(Default)]
struct LossState {
    reason: Option<String>,
    callbacks: Vec<LossCallback>,
}

impl fmt::Debug for LossWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LossWatch").field(&self.reason()).finish()
    }
}

impl LossWatch {
    /// A watch that has not fired.
    pub fn new() -> LossWatch {
        LossWatch::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LossState> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the lock is lost, wakes every waiter and runs every
    /// callback. Only the first reason is kept.
    pub fn fire(&self, reason: impl Into<String>) {
        let mut state = self.state();
        if state.reason.is_some() {
            return;
        }
        let reason = reason.into();
        state.reason = Some(reason.clone());
        let callbacks = std::mem::take(&mut state.callbacks);
        drop(state);
        self.0.1.notify_all();
        for callback in callbacks {
            callback(reason.clone());
        }
    }

    /// Why the lock was lost, if it was.
    pub fn reason(&self) -> Option<String> {
        self.state().reason.clone()
    }

    /// Calls `callback` with the reason once the lock is lost (at once, if
    /// it already is).
    pub fn on_loss(&self, callback: impl FnOnce(String) + Send + 'static) {
        let mut state = self.state();
        match state.reason.clone() {
            Some(reason) => {
                drop(state);
                callback(reason);
            }
            None => state.callbacks.push(Box::new(callback)),
        }
    }

    /// Waits until the lock is lost or `timeout` passes; the reason if lost.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<String> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.state();
        while state.reason.is_none() {
            match deadline {
                None => state = self.0.1.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = self
                        .0
                        .1
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        state.reason.clone()
    }
}

/// A held lock. Dropping it releases the lock; a failure to release is
/// logged, never raised.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct Guard {
    held: Option<Box<dyn Held>>,
}

impl Guard {
    /// Wraps what a backend holds.
    pub fn new(held: Box<dyn Held>) -> Guard {
        Guard { held: Some(held) }
    }

    fn held(&self) -> &dyn Held {
        self.held.as_deref().expect("a guard holds until dropped")
    }

    /// The fencing token of this acquisition: larger than every token
    /// handed out before for this lock. `None` when it could not be
    /// recorded durably (then it must not be used for fencing).
    pub fn token(&self) -> Option<u64> {
        self.held().token()
    }

    /// The record written for this holder.
    pub fn record(&self) -> &Record {
        self.held().record()
    }

    /// Why the lock was lost, or `None` while it is still held.
    pub fn lost(&self) -> Option<String> {
        self.held().loss().reason()
    }

    /// A watch that fires when the lock is lost; it can be waited on from
    /// another thread.
    pub fn loss_watch(&self) -> LossWatch {
        self.held().loss().clone()
    }

    /// Variables that describe the lock to a child process
    /// (`ONLYONE_NAME`, `ONLYONE_TOKEN`, and the backend's own).
    pub fn env(&self) -> Vec<(String, String)> {
        let name = self.name();
        let mut env = vec![("ONLYONE_NAME".to_owned(), name.base().to_owned())];
        if let Some(slot) = name.slot_number() {
            env.push(("ONLYONE_SLOT".to_owned(), slot.to_string()));
        }
        if let Some(token) = self.token() {
            env.push(("ONLYONE_TOKEN".to_owned(), token.to_string()));
        }
        env.extend(self.held().env());
        env
    }

    /// The name of the lock held.
    pub fn name(&self) -> &LockName {
        self.held().name()
    }

    /// Descriptors a child must inherit to keep the lock while it runs.
    pub fn inheritable_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.held().inheritable_fds()
    }

    /// Releases the lock now, reporting failure.
    ///
    /// # Errors
    ///
    /// The backend could not release cleanly; the lock is still released
    /// when the process exits.
    pub fn release(mut self) -> Result<()> {
        match self.held.take() {
            Some(held) => held.release(),
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take()
            && let Err(err) = held.release()
        {
            log::warn!("releasing the lock failed: {err}");
        }
    }
}
