//! `Lock`: a name and the backend it lives in.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::file::FileBackend;
use crate::backend::{Attempt, Backend, Status};
use crate::error::Result;
use crate::name::LockName;

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
        Lock::new(name, FileBackend::new(crate::default_dir()))
    }

    /// Records `command` as what the holder runs, for others to see.
    pub fn command(mut self, command: Vec<String>) -> Lock {
        self.command = command;
        self
    }

    /// Turns the lock into a semaphore: at most `slots` holders at once,
    /// each holding one slot lock (`NAME@1` ... `NAME@N`), each with its own
    /// fencing token. A waiter takes whichever slot frees first.
    ///
    /// # Errors
    ///
    /// A usage error when `slots` is 0.
    pub fn max(mut self, slots: u32) -> Result<Lock> {
        if slots == 0 {
            return Err(crate::Error::usage("--max must be at least 1"));
        }
        self.slots = Some(slots);
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
    /// The backend cannot be used, or refuses for safety.
    pub fn try_acquire(&self) -> Result<Attempt> {
        match self.slots {
            None => self.backend.try_acquire(&self.name, &self.command),
            Some(_) => {
                self.backend
                    .acquire_any(&self.slot_names(), &self.command, Some(Duration::ZERO))
            }
        }
    }

    /// Waits for the lock, without limit (`None`) or at most `timeout`;
    /// [`Attempt::Held`] when the timeout passed first.
    ///
    /// # Errors
    ///
    /// The backend cannot be used, or refuses for safety.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<Attempt> {
        match self.slots {
            None => self.backend.acquire(&self.name, &self.command, timeout),
            Some(_) => self
                .backend
                .acquire_any(&self.slot_names(), &self.command, timeout),
        }
    }

    /// Whether the lock is held and by whom, without taking it.
    ///
    /// # Errors
    ///
    /// The backend cannot be used.
    pub fn status(&self) -> Result<Status> {
        self.backend.status(&self.name)
    }
}
