//! A held MySQL/MariaDB named lock, and the heartbeat thread that owns its
//! session and checks it: `IS_USED_LOCK(name) = CONNECTION_ID()` every
//! interval, each answer awaited no longer than the heartbeat deadline T
//! counted from when the last good heartbeat was sent (as the PostgreSQL
//! backend's heartbeat does).
//!
//! After each good heartbeat the holder also reads its row of the state
//! table: a row deleted or altered by hand is written back from what the
//! holder knows, so that the next holder still waits the lock-delay. When
//! it cannot be, the loss fires but the session, and the lock, are kept
//! until the guard is dropped, once the command has stopped. A row check
//! held up by a row lock (`innodb_lock_wait_timeout` = 1 s on the lock
//! session) is skipped for that beat: the heartbeat alone decides whether
//! the lock is held.

use std::os::fd::BorrowedFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::session::{Failure, Session};
use super::table;
use crate::backend::{Held, LossWatch};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;

/// How long a clean release may take (marking the row, unlocking), at
/// least; it may also take a whole heartbeat deadline.
const MIN_RELEASE_DEADLINE: Duration = Duration::from_secs(5);

/// What the heartbeat needs to know about the lock it keeps.
#[derive(Clone, Debug)]
pub(super) struct Keep {
    pub name: LockName,
    /// The name given to `GET_LOCK`.
    pub lock_name: String,
    pub token: u64,
    pub interval: Duration,
    pub deadline: Duration,
    /// What the holder wrote in its row, and keeps there.
    pub holding: table::Holding,
    /// The statement that fences a write with this acquisition's token.
    pub fence: String,
}

/// A lock held through a MySQL session.
#[derive(Debug)]
pub(super) struct MysqlHeld {
    name: LockName,
    lock_name: String,
    /// Where the lock lives, as `status` shows it.
    location: String,
    record: Record,
    token: u64,
    /// The statement that fences a write with this token.
    fence: String,
    loss: LossWatch,
    heartbeat: Heartbeat,
}

impl MysqlHeld {
    /// Hands `session`, which holds the lock and has recorded `record`, to
    /// a new heartbeat thread.
    ///
    /// # Errors
    ///
    /// The session fails or the thread cannot start; the session is
    /// closed, which frees the lock.
    pub fn start(mut session: Session, keep: Keep, record: Record) -> Result<MysqlHeld> {
        // A row check (or write-back) held up by another transaction's row
        // lock gives up within a second, leaving time for the heartbeat.
        session
            .execute("SET SESSION innodb_lock_wait_timeout = 1")
            .map_err(|failure| session.error("configuring the lock session", failure))?;
        // The session answered the statement that recorded the token only
        // while it was alive, and a live session holds its lock: now is a
        // safe first proof (it is later than that answer's sending).
        let proof = Instant::now();
        let location = super::lock_location(session.location(), &keep.lock_name);
        let loss = LossWatch::proven_by_checks(keep.deadline);
        loss.proven(proof);
        let (commands, received) = mpsc::channel();
        let beater = Beater {
            session,
            keep: keep.clone(),
            loss: loss.clone(),
            last_proof: proof,
            row_skipped: false,
        };
        let thread = thread::Builder::new()
            .name("onlyone-mysql-heartbeat".into())
            .spawn(move || beater.run(&received))
            .map_err(|err| {
                Error::unavailable("cannot start the MySQL heartbeat thread").with_source(err)
            })?;
        Ok(MysqlHeld {
            name: keep.name,
            lock_name: keep.lock_name,
            location,
            record,
            token: keep.token,
            fence: keep.fence,
            loss,
            heartbeat: Heartbeat {
                commands,
                thread: Some(thread),
            },
        })
    }

    /// Waits out the lock-delay while the heartbeat keeps checking, but
    /// not past `deadline`: `None` when the deadline came first (dropping
    /// the lock then leaves the row 'held', as it must: no command ran).
    ///
    /// # Errors
    ///
    /// A lost-lock error when the lock is lost during the delay.
    pub fn wait_lock_delay(
        self,
        delay: Duration,
        deadline: Option<Instant>,
    ) -> Result<Option<MysqlHeld>> {
        let until = Instant::now().checked_add(delay);
        let bounded = match (until, deadline) {
            (Some(until), Some(deadline)) if deadline < until => Some(deadline),
            (None, Some(deadline)) => Some(deadline),
            (until, _) => until,
        };
        let wait = bounded.map(|at| at.saturating_duration_since(Instant::now()));
        if let Some(reason) = self.loss.wait(wait) {
            return Err(Error::lost(format!(
                "lost lock '{}' during its lock-delay, before its command started: {reason}",
                self.name
            ))
            .ending_session(true));
        }
        Ok((bounded == until).then_some(self))
    }
}

impl Held for MysqlHeld {
    fn record(&self) -> &Record {
        &self.record
    }

    fn token(&self) -> Option<u64> {
        Some(self.token)
    }

    fn name(&self) -> &LockName {
        &self.name
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ONLYONE_LOCK".to_owned(), self.location.clone()),
            ("ONLYONE_MYSQL_LOCK".to_owned(), self.lock_name.clone()),
            ("ONLYONE_FENCE".to_owned(), self.fence.clone()),
        ]
    }

    fn inheritable_fds(&self) -> Vec<BorrowedFd<'_>> {
        // A database session cannot be handed to a child.
        Vec::new()
    }

    fn loss(&self) -> &LossWatch {
        &self.loss
    }

    fn fence_sql(&self) -> Option<String> {
        Some(self.fence.clone())
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        self.heartbeat.stop(Command::Release)
    }
}

/// What the heartbeat thread is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    /// Record a clean release, unlock, close.
    Release,
    /// Just close the session (the server then frees the lock); the state
    /// row keeps saying "held", so the next holder waits the lock-delay.
    Abandon,
}

/// The heartbeat thread and the way to stop it.
#[derive(Debug)]
struct Heartbeat {
    commands: Sender<Command>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Heartbeat {
    fn stop(&mut self, command: Command) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // A send fails when the thread already ended after a loss.
        let _ = self.commands.send(command);
        thread.join().unwrap_or_else(|_| {
            Err(Error::unavailable(
                "the MySQL heartbeat thread panicked; the server frees the lock when this process exits",
            ))
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Err(err) = self.stop(Command::Abandon) {
            log::warn!("closing the MySQL lock session: {err}");
        }
    }
}

/// ER_LOCK_WAIT_TIMEOUT: a row lock was not granted in time.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// Why the holder's row could not be kept.
enum RowTrouble {
    /// The session is gone: the lock with it.
    SessionGone(String),
    /// The session still holds the lock, but the row cannot be read or
    /// written back.
    CannotKeep(String),
    /// A row lock held the check up: the row is checked again at the next
    /// heartbeat.
    Skipped(String),
}

/// The heartbeat thread's state: it alone uses the session.
struct Beater {
    session: Session,
    keep: Keep,
    loss: LossWatch,
    /// When the last heartbeat that was answered well was sent.
    last_proof: Instant,
    /// The last row check was cut short (said once).
    row_skipped: bool,
}

impl Beater {
    fn run(mut self, commands: &Receiver<Command>) -> Result<()> {
        loop {
            match commands.recv_timeout(self.keep.interval) {
                Ok(Command::Release) => return self.release(),
                Ok(Command::Abandon) | Err(RecvTimeoutError::Disconnected) => {
                    self.session.close();
                    return Ok(());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let sent = Instant::now();
            let left = self.keep.deadline.saturating_sub(self.last_proof.elapsed());
            if let Err(reason) = self.session.beat(&self.keep.lock_name, left) {
                self.loss.fire(reason);
                // Dropping the session frees the lock if the server still
                // had it; the row keeps saying "held", so the next holder
                // waits the lock-delay.
                self.session.abandon();
                return Ok(());
            }
            self.last_proof = sent;
            self.loss.proven(sent);
            match self.keep_row() {
                Ok(()) => self.row_skipped = false,
                // Not a loss: the heartbeat itself proved the lock.
                Err(RowTrouble::Skipped(reason)) => {
                    if !std::mem::replace(&mut self.row_skipped, true) {
                        log::warn!(
                            "lock '{}': {reason}; the row is checked again at the next heartbeats",
                            self.keep.name
                        );
                    }
                }
                Err(RowTrouble::SessionGone(reason)) => {
                    self.loss.fire(reason);
                    self.session.abandon();
                    return Ok(());
                }
                Err(RowTrouble::CannotKeep(reason)) => {
                    self.loss.fire(reason);
                    return self.hold_until_dropped(commands);
                }
            }
        }
    }

    /// Reads the holder's row, and writes it back if it was deleted or
    /// altered, each within what is left of the heartbeat deadline.
    fn keep_row(&mut self) -> std::result::Result<(), RowTrouble> {
        let left =
            |last_proof: Instant, deadline: Duration| deadline.saturating_sub(last_proof.elapsed());
        let trouble = |doing: &str, failure: Failure| {
            let reason = format!(
                "{doing} its row in the state table onlyone_locks failed ({})",
                failure.describe()
            );
            if failure.ends_session() {
                // Said as a failed heartbeat says it: the session, not the
                // row, is what was lost.
                RowTrouble::SessionGone(format!(
                    "the MySQL session holding the lock failed ({reason}); the lock must be considered gone"
                ))
            } else if failure.code() == Some(LOCK_WAIT_TIMEOUT) {
                RowTrouble::Skipped(reason)
            } else {
                RowTrouble::CannotKeep(format!(
                    "{reason}: the row may no longer make the next holder wait for this command, so the lock is kept until the command has stopped"
                ))
            }
        };
        let intact = table::holder_row_intact(
            &mut self.session,
            &self.keep.holding,
            left(self.last_proof, self.keep.deadline),
        )
        .map_err(|failure| trouble("reading", failure))?;
        if intact {
            return Ok(());
        }
        log::warn!(
            "lock '{}': its row in the state table onlyone_locks was deleted or altered; writing it back (token {})",
            self.keep.name,
            self.keep.token
        );
        table::restore(
            &mut self.session,
            &self.keep.holding,
            left(self.last_proof, self.keep.deadline),
        )
        .map_err(|failure| trouble("writing back", failure))
    }

    /// After a loss declared while the lock is still held: keeps the
    /// session (its heartbeats keep the server from ending it as idle)
    /// until the guard is released or dropped, which the supervisor does
    /// once the command has stopped. Nothing is written: the row is not
    /// this holder's to vouch for any more.
    fn hold_until_dropped(mut self, commands: &Receiver<Command>) -> Result<()> {
        loop {
            match commands.recv_timeout(self.keep.interval) {
                Ok(_) | Err(RecvTimeoutError::Disconnected) => {
                    self.session.close();
                    return Ok(());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self
                .session
                .beat(&self.keep.lock_name, self.keep.deadline)
                .is_err()
            {
                self.session.abandon();
                return Ok(());
            }
        }
    }

    /// A clean release: the row says "released" first, then the lock goes,
    /// then the session.
    fn release(mut self) -> Result<()> {
        let now = Instant::now();
        let budget = self.keep.deadline.max(MIN_RELEASE_DEADLINE);
        let deadline = now
            .checked_add(budget)
            .unwrap_or(now + MIN_RELEASE_DEADLINE);
        let marked = table::mark_released(
            &mut self.session,
            &self.keep.lock_name,
            self.keep.token,
            deadline,
        );
        let unlocked = self.session.release_lock(&self.keep.lock_name, deadline);
        self.session.close();
        marked.and(unlocked)
    }
}
