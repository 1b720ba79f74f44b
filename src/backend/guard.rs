//! `Guard`: a held lock as the caller sees it (token, record, loss, the
//! command's environment), released when dropped.

use std::os::fd::{BorrowedFd, RawFd};

use super::{Held, LossWatch};
use crate::error::Result;
use crate::name::LockName;
use crate::record::Record;

/// Every variable onlyone sets in a command's environment. The supervisor
/// removes all of them from what the command inherits before it sets its
/// own, so that a value onlyone does not give (no token, no slot) is absent
/// rather than inherited from an enclosing run or the caller. Onlyone's own
/// configuration (`ONLYONE_DIR`, `ONLYONE_POSTGRES_URL`) is not among them.
pub const COMMAND_ENV: [&str; 8] = [
    "ONLYONE_NAME",
    "ONLYONE_SLOT",
    "ONLYONE_TOKEN",
    "ONLYONE_LOCK",
    "ONLYONE_LOCK_FILE",
    "ONLYONE_POSTGRES_KEY",
    "ONLYONE_MYSQL_LOCK",
    "ONLYONE_FENCE",
];

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
    /// handed out before for this lock.
    ///
    /// `None` when no token could be recorded durably, for a token that
    /// was not recorded could be handed out again. That happens only on
    /// files: the record could not be written (a read-only or immutable
    /// lock file, a full disk), the lock file holds something other than a
    /// record (`Cargo.lock` locked with `--dir .`), or the count reached
    /// `u64::MAX`; each is logged as a warning. On PostgreSQL it is always
    /// `Some`: the token is committed in the state table before the guard
    /// is handed out.
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
    /// (`ONLYONE_NAME`, `ONLYONE_TOKEN`, and the backend's own). Remove
    /// every one of [`COMMAND_ENV`] from the child's environment before
    /// setting these: a variable that is not given here (no token, no
    /// slot) must not be inherited from an enclosing holder.
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

    /// On PostgreSQL, `SELECT "schema".onlyone_fence('NAME'::text, TOKEN::bigint)`: run
    /// it inside a transaction on the lock's database, before that
    /// transaction's writes. It raises SQLSTATE
    /// [`STALE_TOKEN_SQLSTATE`](crate::STALE_TOKEN_SQLSTATE) (`ON001`)
    /// unless this acquisition still holds the lock, and the next holder
    /// does not start until the transaction has ended: writes through the
    /// fence never interleave with the next holder's, however long this
    /// process pauses. The command gets it as `ONLYONE_FENCE`.
    ///
    /// On MySQL/MariaDB, ``SELECT `db`.onlyone_fence('NAME', TOKEN)``, with
    /// the same meaning, run first inside a transaction (`START
    /// TRANSACTION`; with autocommit on and no transaction its share lock
    /// ends with the statement).
    ///
    /// `None` on files (the fence lives in the database). With an explicit
    /// advisory key the fence cannot find the lock (it goes by name): the
    /// statement then always raises `ON001`, so that a program that runs
    /// it never writes unfenced believing it is fenced.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use onlyone::{Attempt, Lock, PostgresBackend, PostgresConfig};
    ///
    /// let url = "postgres://bot@db1/app";
    /// let backend = PostgresBackend::new(PostgresConfig::new(url))?;
    /// if let Attempt::Acquired(guard) = Lock::new("report", backend)?.try_acquire()? {
    ///     let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    ///     let mut tx = client.transaction()?;
    ///     tx.batch_execute(&guard.fence_sql().expect("on PostgreSQL"))?;
    ///     tx.execute("INSERT INTO reports (day) VALUES (current_date)", &[])?;
    ///     tx.commit()?; // fails if a later holder has taken the lock
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn fence_sql(&self) -> Option<String> {
        self.held().fence_sql()
    }

    /// Descriptors a child must inherit to keep the lock while it runs.
    pub fn inheritable_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.held().inheritable_fds()
    }

    /// Every descriptor that holds the lock now (with a lock file restored
    /// since acquisition): what a child made by `fork()` closes. For the
    /// Python package's fork handling.
    #[doc(hidden)]
    pub fn descriptors_now(&self) -> Vec<RawFd> {
        self.held().descriptors_now()
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
