//! A held PostgreSQL lock, and the heartbeat thread that owns its session
//! and checks it.
//!
//! Each heartbeat must be answered before the heartbeat deadline T runs
//! out, counted from when the last good heartbeat was *sent*: its answer
//! only proves the lock was held at some instant after the sending, so
//! that is the last moment the holder knows it held the lock. The wait for
//! an answer is cut off there, so a frozen network is noticed at T even
//! though the query itself would hang.

use std::os::fd::BorrowedFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio_postgres::Statement;

use super::session::Session;
use super::state::Table;
use crate::backend::{Held, LossWatch};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;

/// How long a clean release may take (marking the row, unlocking), at
/// least; it may also take a whole heartbeat deadline.
const MIN_RELEASE_DEADLINE: Duration = Duration::from_secs(5);

/// How much longer than the heartbeat deadline the server lets the lock
/// session sit idle before it ends it.
const IDLE_MARGIN: Duration = Duration::from_secs(2);

/// What the heartbeat needs to know about the lock it keeps.
#[derive(Clone, Debug)]
pub(super) struct Keep {
    pub name: LockName,
    pub key: i64,
    pub token: u64,
    pub table: Table,
    pub interval: Duration,
    pub deadline: Duration,
}

/// A lock held through a PostgreSQL session.
#[derive(Debug)]
pub(super) struct PostgresHeld {
    name: LockName,
    key: i64,
    record: Record,
    token: u64,
    loss: LossWatch,
    heartbeat: Heartbeat,
}

impl PostgresHeld {
    /// Hands `session`, which holds the lock, to a new heartbeat thread.
    ///
    /// # Errors
    ///
    /// The heartbeat's query cannot be prepared or its thread cannot
    /// start; the session is closed, which frees the lock.
    pub fn start(mut session: Session, keep: Keep, record: Record) -> Result<PostgresHeld> {
        // The server itself ends the session when the heartbeats stop (a
        // frozen or partitioned holder whose TCP connection stays up, as
        // through a middlebox), which frees the lock. A live holder is
        // never idle that long: it sends a heartbeat every interval.
        let idle_limit = keep.deadline.saturating_add(IDLE_MARGIN);
        session.set_if_known("idle_session_timeout", &idle_limit.as_millis().to_string())?;
        // The session answers this statement only while it is alive, and
        // a live session still holds its lock: its sending is the first
        // proof that the lock is held.
        let proof = Instant::now();
        let statement = session.prepare_beat()?;
        let loss = LossWatch::new();
        let heartbeat = Heartbeat::start(session, statement, keep.clone(), loss.clone(), proof)?;
        Ok(PostgresHeld {
            name: keep.name,
            key: keep.key,
            token: keep.token,
            record,
            loss,
            heartbeat,
        })
    }

    /// Waits out the lock-delay while the heartbeat keeps checking.
    ///
    /// # Errors
    ///
    /// A lost-lock error when the lock is lost during the delay.
    pub fn wait_lock_delay(self, delay: Duration) -> Result<PostgresHeld> {
        match self.loss.wait(Some(delay)) {
            None => Ok(self),
            Some(reason) => Err(Error::lost(format!(
                "lost the lock {} during its lock-delay: {reason}",
                self.name
            ))),
        }
    }
}

impl Held for PostgresHeld {
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
        vec![("ONLYONE_POSTGRES_KEY".to_owned(), self.key.to_string())]
    }

    fn inheritable_fds(&self) -> Vec<BorrowedFd<'_>> {
        // A database session cannot be handed to a child.
        Vec::new()
    }

    fn loss(&self) -> &LossWatch {
        &self.loss
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
    fn start(
        session: Session,
        statement: Statement,
        keep: Keep,
        loss: LossWatch,
        proof: Instant,
    ) -> Result<Heartbeat> {
        let (commands, received) = mpsc::channel();
        let beater = Beater {
            session,
            statement,
            keep,
            loss,
            last_proof: proof,
        };
        // If the thread cannot start, the session is dropped with the
        // closure: the lock is freed.
        let thread = thread::Builder::new()
            .name("onlyone-pg-heartbeat".into())
            .spawn(move || beater.run(&received))
            .map_err(|err| {
                Error::unavailable("cannot start the PostgreSQL heartbeat thread").with_source(err)
            })?;
        Ok(Heartbeat {
            commands,
            thread: Some(thread),
        })
    }

    /// Has the heartbeat thread release or abandon the lock, and waits for
    /// it; every step it takes has a deadline.
    fn stop(&mut self, command: Command) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // A send fails when the thread already ended after a loss.
        let _ = self.commands.send(command);
        thread.join().unwrap_or_else(|_| {
            Err(Error::unavailable(
                "the PostgreSQL heartbeat thread panicked; the server frees the lock when this process exits",
            ))
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Err(err) = self.stop(Command::Abandon) {
            log::warn!("closing the PostgreSQL lock session: {err}");
        }
    }
}

/// The heartbeat thread's state: it alone uses the session.
struct Beater {
    session: Session,
    statement: Statement,
    keep: Keep,
    loss: LossWatch,
    /// When the last heartbeat that was answered well was sent.
    last_proof: Instant,
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
            match self.session.beat(&self.statement, self.keep.key, left) {
                Ok(()) => self.last_proof = sent,
                Err(reason) => {
                    self.loss.fire(reason);
                    // Nothing more to do with this session: dropping it
                    // frees the lock if the server still had it, and the
                    // row keeps saying "held" so that the next holder
                    // waits the lock-delay.
                    self.session.abandon();
                    return Ok(());
                }
            }
        }
    }

    /// A clean release: the row says "released" first, then the lock goes,
    /// then the session.
    fn release(mut self) -> Result<()> {
        let deadline = Instant::now() + self.keep.deadline.max(MIN_RELEASE_DEADLINE);
        let marked = self.keep.table.mark_released(
            &mut self.session,
            &self.keep.name,
            self.keep.token,
            deadline,
        );
        let unlocked = self.session.unlock(self.keep.key, deadline);
        self.session.close();
        marked.and(unlocked)
    }
}
