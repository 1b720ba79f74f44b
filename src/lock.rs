//! `Lock`: a name and the backend it lives in.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::file::{FileBackend, default_dir};
use crate::backend::{
    Attempt, Backend, HolderId, Status, Stop, Wait, pool_and_plain_mix,
    pool_and_plain_mix_unreleased,
};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::sys;

/// A named lock in a backend. Cheap to clone; taking it gives a
/// [`Guard`](crate::Guard).
///
/// # Example
///
/// Wait at most 30 seconds for a lock shared by a group of users:
///
/// ```no_run
/// # fn main() -> Result<(), onlyone::Error> {
/// use std::time::Duration;
/// use onlyone::{Attempt, FileBackend, Lock};
///
/// let lock = Lock::new("backup", FileBackend::new("/srv/locks"))?
///     .command(vec!["backup".into(), "--full".into()]);
/// match lock.acquire(Some(Duration::from_secs(30)))? {
///     Attempt::Acquired(guard) => {
///         // Hand the token to the storage so it can refuse older holders.
///         let _token = guard.token();
///         // ... if guard.lost() is ever Some, stop writing at once ...
///     }
///     Attempt::Held(holder) => eprintln!("gave up: held by {holder}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Lock {
    name: LockName,
    backend: Arc<dyn Backend>,
    command: Vec<String>,
    slots: Option<u32>,
}

impl Lock {
    /// The lock `name` in `backend`.
    ///
    /// # Errors
    ///
    /// A usage error when `name` breaks the [naming rule](crate::NAME_RULE).
    pub fn new(name: &str, backend: impl Backend + 'static) -> Result<Lock> {
        Ok(Lock::with_backend(LockName::new(name)?, Arc::new(backend)))
    }

    /// The lock `name` in a shared backend.
    pub fn with_backend(name: LockName, backend: Arc<dyn Backend>) -> Lock {
        Lock {
            name,
            backend,
            command: Vec::new(),
            slots: None,
        }
    }

    /// The lock file `name` in the per-user default directory
    /// ([`default_dir`](crate::default_dir)).
    ///
    /// # Errors
    ///
    /// A usage error for a bad name; the directory is only created when the
    /// lock is taken.
    pub fn file(name: &str) -> Result<Lock> {
        Lock::new(name, FileBackend::new(default_dir()))
    }

    /// Records `command` as what the holder runs, for others to see.
    pub fn command(mut self, command: Vec<String>) -> Lock {
        self.command = command;
        self
    }

    /// Turns the lock into a semaphore: at most `slots` holders at once,
    /// each holding one slot lock (`NAME@1` ... `NAME@N`), each with its own
    /// fencing token. A waiter takes whichever slot frees first. One slot
    /// is the plain lock `NAME` itself.
    ///
    /// A name is a pool or a plain lock, never both: taking a slot while
    /// the plain lock is held, or the plain lock while a slot is, is
    /// refused (see [`Lock::try_acquire`]).
    ///
    /// # Errors
    ///
    /// A usage error when `slots` is 0.
    pub fn max(mut self, slots: u32) -> Result<Lock> {
        if slots == 0 {
            return Err(Error::usage("a pool has at least 1 slot"));
        }
        self.slots = (slots >= 2).then_some(slots);
        Ok(self)
    }

    /// The slot locks of a semaphore, or just the lock itself.
    pub fn slot_names(&self) -> Vec<LockName> {
        match self.slots {
            Some(slots) => (1..=slots).map(|slot| self.name.slot(slot)).collect(),
            None => vec![self.name.clone()],
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &LockName {
        &self.name
    }

    /// One attempt, never waiting. "Held by someone else" is
    /// [`Attempt::Held`], not an error.
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety: among others
    /// when the name is used as a pool of slots and as a plain lock at once
    /// (then nothing is held on return).
    pub fn try_acquire(&self) -> Result<Attempt> {
        self.take(Wait::No)
    }

    /// One attempt, never waiting for another holder, whose lock-delay
    /// (PostgreSQL, after an unclean release) ends once `bound` has passed;
    /// then [`Attempt::Held`] with [`Holder::lock_delay`](crate::Holder)
    /// set. For a wait that first says whom it waits for: try within the
    /// whole timeout, then [`Lock::acquire`] for the rest of it.
    ///
    /// # Errors
    ///
    /// As [`Lock::try_acquire`].
    pub fn try_acquire_within(&self, bound: Duration) -> Result<Attempt> {
        let attempt = match self.slots {
            None => self
                .backend
                .try_acquire_within(&self.name, &self.command, bound)?,
            Some(_) => {
                self.backend
                    .try_acquire_any_within(&self.slot_names(), &self.command, bound)?
            }
        };
        self.refuse_pool_and_plain_mix(attempt)
    }

    /// Waits for the lock, without limit (`None`) or at most `timeout`;
    /// [`Attempt::Held`] when the timeout passed first. The timeout covers
    /// a lock-delay too (see [`Lock::try_acquire_within`]).
    ///
    /// # Errors
    ///
    /// As [`Lock::try_acquire`].
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<Attempt> {
        self.take(Wait::at_most(timeout))
    }

    /// Takes the lock, or one slot of the pool, waiting as `wait` says.
    fn take(&self, wait: Wait) -> Result<Attempt> {
        let attempt = match self.slots {
            None => self.backend.acquire(&self.name, &self.command, wait)?,
            Some(_) => self
                .backend
                .acquire_any(&self.slot_names(), &self.command, wait)?,
        };
        self.refuse_pool_and_plain_mix(attempt)
    }

    /// A name is a pool of slots or a plain lock, not both: `job` and
    /// `job@1` are different locks, so a plain holder and a pool member
    /// would run side by side. Each side checks for the other *after*
    /// taking its own lock, without taking anything, and lets go if it
    /// finds it. Of two that race, the one that checks last took its lock
    /// after the other had taken its own (each checks after its own
    /// acquisition) and so finds it held: at least one refuses, and no
    /// check-then-act window lets both run.
    fn refuse_pool_and_plain_mix(&self, attempt: Attempt) -> Result<Attempt> {
        let Attempt::Acquired(guard) = attempt else {
            return Ok(attempt);
        };
        if self.backend.refuses_pool_and_plain_mix() {
            return Ok(Attempt::Acquired(guard));
        }
        // The other kind in use: held now, or not released cleanly (its
        // holder lost it while its command may still run, and a lock-delay
        // is owed, which only a holder of that kind waits out).
        let other = match self.slots {
            None => self
                .backend
                .slots(&self.name)?
                .into_iter()
                .filter(|slot| slot.held || slot.unreleased)
                .min_by_key(|slot| !slot.held),
            Some(_) => Some(self.backend.status(&self.name)?)
                .filter(|status| status.held || status.unreleased),
        };
        let Some(other) = other else {
            return Ok(Attempt::Acquired(guard));
        };
        drop(guard);
        Err(if other.held {
            pool_and_plain_mix(&self.name, &other.name)
        } else {
            pool_and_plain_mix_unreleased(&self.name, &other.name)
        })
    }

    /// Whether the lock is held and by whom, without taking it.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    pub fn status(&self) -> Result<Status> {
        self.backend.status(&self.name)
    }

    /// The status of every lock in the backend this lock lives in.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    pub fn list(&self) -> Result<Vec<Status>> {
        self.backend.list()
    }

    /// The status of each slot of this name's pool (`NAME@1` ...) that the
    /// backend knows of: `NAME@*.lock` in the directory or a held slot's
    /// socket; `NAME@N` rows in the state table.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    pub fn slots(&self) -> Result<Vec<Status>> {
        self.backend.slots(&self.name)
    }

    /// The locks this name stands for: a slot (`NAME@N`) is itself; a
    /// name is its plain lock and every slot of its pool that the backend
    /// knows of ([`Lock::slots`]). They share this lock's backend.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    pub fn members(&self) -> Result<Vec<Lock>> {
        let mut members = vec![self.clone()];
        if self.name.slot_number().is_none() {
            members.extend(
                self.slots()?
                    .iter()
                    .filter_map(|status| LockName::from_stored(&status.name))
                    .map(|name| Lock::with_backend(name, self.backend.clone())),
            );
        }
        Ok(members)
    }

    /// Asks the holder of this lock to stop, identifying it exactly:
    /// `signal` goes to its verified process, or its database session is
    /// ended. With `expected`, only that holder is stopped (see
    /// [`Backend::stop_holder`]).
    ///
    /// # Errors
    ///
    /// A usage error for a signal the C library reserves
    /// ([`is_reserved_signal`](crate::is_reserved_signal)); the holder
    /// cannot be identified safely, or the backend cannot be used.
    pub fn stop_holder(&self, signal: i32, expected: Option<&HolderId>) -> Result<Stop> {
        if sys::is_reserved_signal(signal) {
            return Err(Error::usage(format!(
                "signal {signal} is reserved by the C library for its threads"
            )));
        }
        self.backend.stop_holder(&self.name, signal, expected)
    }

    /// Waits until this lock is free, without taking it; false when
    /// `timeout` passed first (`None`: without limit).
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    pub fn wait_free(&self, timeout: Option<Duration>) -> Result<bool> {
        self.backend.wait_free(&self.name, timeout)
    }
}
