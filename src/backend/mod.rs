//! The backend trait: what every place where locks live (a directory, a
//! database) does, and what it hands out. The supervisor and the
//! command-line tool only see these types, never files or SQL.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;

pub mod file;
mod guard;
mod loss;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod settle;
mod status;
pub(crate) mod ticker;
mod wait;

pub use self::guard::{COMMAND_ENV, Guard};
pub use self::loss::LossWatch;
pub use self::status::{Holder, HolderId, Status};
pub use self::wait::Wait;
use self::wait::{first_free, free_now, nap, rounds};

/// A place where locks live: a directory of lock files, or a database.
///
/// Implementations decide liveness only from the kernel or the database
/// server, never from a pid in a record.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Takes the lock `name` for a holder that will run `command`
    /// (recorded for others to see), waiting for another holder as `wait`
    /// says: [`Wait::No`] tries once; else until the deadline has passed
    /// (then [`Attempt::Held`]), or without limit. Waiting is done by the
    /// kernel or the server, not by polling. The deadline bounds a
    /// lock-delay too (see [`Backend::try_acquire_within`]).
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety.
    fn acquire(&self, name: &LockName, command: &[String], wait: Wait) -> Result<Attempt>;

    /// One attempt, never waiting: [`Backend::acquire`] with [`Wait::No`].
    ///
    /// # Errors
    ///
    /// As [`Backend::acquire`].
    fn try_acquire(&self, name: &LockName, command: &[String]) -> Result<Attempt> {
        self.acquire(name, command, Wait::No)
    }

    /// One attempt that never waits for another holder, as
    /// [`Backend::try_acquire`], but whose lock-delay ends once `bound` has
    /// passed: a backend with a lock-delay (PostgreSQL, after an unclean
    /// release) then gives the lock up without having run anything, and
    /// returns [`Attempt::Held`] with [`Holder::lock_delay`] set. The
    /// default is [`Backend::try_acquire`], for backends without one.
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety.
    fn try_acquire_within(
        &self,
        name: &LockName,
        command: &[String],
        bound: Duration,
    ) -> Result<Attempt> {
        let _ = bound;
        self.acquire(name, command, Wait::No)
    }

    /// Whether `name` is held and by whom, found without taking the lock.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    fn status(&self, name: &LockName) -> Result<Status>;

    /// Whether this backend itself refuses a name used as a pool of slots
    /// and as a plain lock at once, on the session that took the lock and
    /// before it hands the lock out (see [`crate::Lock`]): the lock then
    /// does not look again. The default says no.
    fn refuses_pool_and_plain_mix(&self) -> bool {
        false
    }

    /// The status of every lock this backend knows of.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    fn list(&self) -> Result<Vec<Status>>;

    /// The status of each slot lock (`NAME@1`, `NAME@2` ...) of the lock
    /// `base` that this backend knows of. This default filters
    /// [`Backend::list`]; a backend that can find them faster overrides it.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    fn slots(&self, base: &LockName) -> Result<Vec<Status>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|status| {
                LockName::from_stored(&status.name).is_some_and(|name| name.is_slot_of(base))
            })
            .collect())
    }

    /// Takes the first free lock of `names` (the slots of a semaphore),
    /// waiting as [`Backend::acquire`] does when all are held;
    /// [`Wait::No`] (or a deadline that has passed) tries each once. This
    /// default re-tries every 50 ms; backends with an event to wait for
    /// override it.
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety.
    fn acquire_any(&self, names: &[LockName], command: &[String], wait: Wait) -> Result<Attempt> {
        let first = rounds(wait, || (), nap, || first_free(self, names, command))?;
        Ok(first.map_or_else(Attempt::Held, Attempt::Acquired))
    }

    /// [`Backend::acquire_any`] with [`Wait::No`] (one try of each slot),
    /// whose lock-delay ends once `bound` has passed, as in
    /// [`Backend::try_acquire_within`]. The default ignores `bound`.
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety.
    fn try_acquire_any_within(
        &self,
        names: &[LockName],
        command: &[String],
        bound: Duration,
    ) -> Result<Attempt> {
        let _ = bound;
        self.acquire_any(names, command, Wait::No)
    }

    /// Asks the holder of `name` to stop, identifying it exactly (never by
    /// matching names or command lines): `signal` goes to the holder's
    /// verified process, or the backend ends the holder's session.
    ///
    /// With `expected`, only that holder is stopped: the backend reads the
    /// holder again right before it acts, and when another holder has the
    /// lock by then it touches nothing and returns [`Stop::Changed`]. A
    /// caller that escalates (SIGTERM, then SIGKILL) passes the holder it
    /// signalled first, so that a successor is never hit. Without
    /// `expected`, the holder found now is stopped.
    ///
    /// # Errors
    ///
    /// The holder cannot be identified safely, or the backend cannot be
    /// used.
    fn stop_holder(
        &self,
        name: &LockName,
        signal: i32,
        expected: Option<&HolderId>,
    ) -> Result<Stop> {
        let _ = (name, signal, expected);
        Err(Error::unavailable(
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
        let free = rounds(Wait::at_most(timeout), || (), nap, || free_now(self, name))?;
        Ok(free.is_ok())
    }
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

    /// The backend's own variables for a child process, as `(variable,
    /// value)` pairs: `ONLYONE_LOCK` (where the lock lives, as
    /// [`Status::location`] says) and its own, such as
    /// `ONLYONE_LOCK_FILE`. Each must be listed in [`COMMAND_ENV`].
    fn env(&self) -> Vec<(String, String)>;

    /// Descriptors a child process must inherit so that the lock outlives
    /// the holder for as long as the child runs (the file backend); empty
    /// when the lock cannot be shared that way (a database session).
    fn inheritable_fds(&self) -> Vec<BorrowedFd<'_>>;

    /// Every descriptor that holds the lock now, including those a backend
    /// opened after acquisition (a restored lock file): what a child made
    /// by `fork()` must close so that it does not keep the lock.
    fn descriptors_now(&self) -> Vec<RawFd> {
        self.inheritable_fds()
            .iter()
            .map(AsRawFd::as_raw_fd)
            .collect()
    }

    /// The watch that fires when the lock is lost.
    fn loss(&self) -> &LossWatch;

    /// The SQL statement that fences a write to the lock's database with
    /// this acquisition's token (see [`Guard::fence_sql`]); `None` where
    /// the backend has no fence.
    fn fence_sql(&self) -> Option<String> {
        None
    }

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

/// What [`Backend::stop_holder`] did.
#[derive(Debug)]
#[must_use]
pub enum Stop {
    /// The holder was signalled (or its session ended); here it is, as it
    /// was verified right before.
    Signalled(Holder),
    /// The holder was asked to stop through the backend (PostgreSQL: a
    /// request in the state row that names its token); here it is, as it
    /// was verified right before. It stops its command and releases the
    /// lock cleanly. One that does not within the caller's bound is
    /// stopped the hard way with SIGKILL as the signal. The duration is
    /// what remains of the lock-delay of a holder asked while it was still
    /// starting (it answers once that has passed, without starting its
    /// command): the caller's bound is extended by that much.
    Requested(Holder, std::time::Duration),
    /// Nobody held the lock.
    Free,
    /// Another holder than the expected one has the lock now; nothing was
    /// signalled.
    Changed(Holder),
}

/// A name used as a pool of slots and as a plain lock at once: `other` (a
/// slot, or the plain lock) is held now.
pub(crate) fn pool_and_plain_mix(name: &LockName, other: &str) -> Error {
    Error::unsafe_(format!(
        "lock '{name}' is used as a pool of slots ({name}@1..) and as a plain lock; a name is one or the other, and '{other}' is held now"
    ))
}

/// The other kind of `name` (see [`pool_and_plain_mix`]) is not held, but
/// `other` was not released cleanly: its holder lost it (its session
/// ended) while its command may still run, and the next holder of `other`
/// owes it a lock-delay, which a start of this kind would skip.
pub(crate) fn pool_and_plain_mix_unreleased(name: &LockName, other: &str) -> Error {
    let clear = if other == name.as_str() {
        format!(
            "take the plain lock '{name}' and release it cleanly (a start of it waits its lock-delay first; its command may be one that does nothing)"
        )
    } else {
        format!(
            "take the slot '{other}' and release it cleanly (a start of the pool takes its first free slot and waits that slot's lock-delay first; start as many at once as needed to reach '{other}')"
        )
    };
    Error::unsafe_(format!(
        "lock '{name}' is used as a pool of slots ({name}@1..) and as a plain lock; a name is one or the other, and '{other}' was not released cleanly: its holder lost it, its command may still run, and its lock-delay has not been waited. To clear it, {clear}; then start again"
    ))
}
