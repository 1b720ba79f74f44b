//! A held PostgreSQL lock, and the heartbeat thread that owns its session
//! and checks it.
//!
//! Each heartbeat must be answered before the heartbeat deadline T runs
//! out, counted from when the last good heartbeat was *sent*: its answer
//! only proves the lock was held at some instant after the sending, so
//! that is the last moment the holder knows it held the lock. The wait for
//! an answer is cut off there, so a frozen network is noticed at T even
//! though the query itself would hang.
//!
//! After each good heartbeat the holder also reads its row of the state
//! table: a row deleted or altered past the guard triggers (DESIGN.md) is
//! written back from what the holder knows. When it cannot be, the loss
//! fires but the session, and the lock, are kept until the guard is
//! dropped, once the command has stopped: nobody starts beside it. A row
//! check held up by a lock on the table is cut off by the server and
//! skipped for that beat: the heartbeat, which never reads the table,
//! alone decides whether the lock is held.

use std::os::fd::BorrowedFd;
use std::thread::{self, JoinHandle};

use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver as Receiver, UnboundedSender as Sender};

use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;

use super::failure::Failure;
use super::session::{POOLER_MESSAGE, Session, Woken};
use super::state::Holding;
use super::table::Table;
use crate::backend::{Held, LossWatch};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;

/// How long a clean release may take (marking the row, unlocking), at
/// least; it may also take a whole heartbeat deadline.
const MIN_RELEASE_DEADLINE: Duration = Duration::from_secs(5);

/// How much longer than the heartbeat deadline the server lets the lock
/// session sit idle before it ends it.
pub(super) const IDLE_MARGIN: Duration = Duration::from_secs(2);

/// What the heartbeat needs to know about the lock it keeps.
#[derive(Clone, Debug)]
pub(super) struct Keep {
    pub name: LockName,
    pub key: i64,
    /// What the holder wrote in its row, and keeps there.
    pub holding: Holding,
    pub table: Table,
    pub interval: Duration,
    pub deadline: Duration,
    /// The fence call for this acquisition, unless the key is an explicit
    /// one (the fence finds a lock by its name).
    pub fence: Option<String>,
}

/// A lock held through a PostgreSQL session.
#[derive(Debug)]
pub(super) struct PostgresHeld {
    name: LockName,
    key: i64,
    /// Where the lock lives, as `status` shows it.
    location: String,
    record: Record,
    token: u64,
    fence: Option<String>,
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
        session.expire_when_idle(keep.deadline.saturating_add(IDLE_MARGIN))?;
        // The session answers this statement only while it is alive, and
        // a live session still holds its lock: its sending is the first
        // proof that the lock is held.
        let proof = Instant::now();
        // Stop requests (`onlyone stop`, `--replace`) are announced on the
        // key's channel; the row, read at every heartbeat too, says
        // whether one is for this holder.
        session
            .batch(&format!("LISTEN {}", stop_channel_sql(keep.key)))
            .map_err(|failure| session.error("listening for stop requests", failure))?;
        let statement = session.prepare_beat()?;
        let location = super::key_location(session.location(), keep.key);
        let loss = LossWatch::proven_by_checks(keep.deadline);
        loss.proven(proof);
        let heartbeat = Heartbeat::start(
            session,
            statement,
            keep.clone(),
            record.clone(),
            loss.clone(),
            proof,
        )?;
        Ok(PostgresHeld {
            name: keep.name,
            key: keep.key,
            location,
            token: keep.holding.token,
            fence: keep.fence,
            record,
            loss,
            heartbeat,
        })
    }

    /// Waits out the lock-delay while the heartbeat keeps checking, but
    /// not past `deadline`: `None` when the deadline came first (dropping
    /// the lock then leaves the row 'held', as it must: no command ran).
    ///
    /// # Errors
    ///
    /// A lost-lock error when the lock is lost during the delay. It ended
    /// a session that protected nothing yet, so a waiter may start over.
    pub fn wait_lock_delay(
        self,
        delay: Duration,
        deadline: Option<Instant>,
    ) -> Result<Option<PostgresHeld>> {
        let until = Instant::now().checked_add(delay);
        let bounded = match (until, deadline) {
            (Some(until), Some(deadline)) if deadline < until => Some(deadline),
            // A delay too long for the clock still ends at the caller's deadline.
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
        let mut env = vec![
            ("ONLYONE_LOCK".to_owned(), self.location.clone()),
            ("ONLYONE_POSTGRES_KEY".to_owned(), self.key.to_string()),
        ];
        if let Some(fence) = &self.fence {
            env.push(("ONLYONE_FENCE".to_owned(), fence.clone()));
        }
        env
    }

    fn fence_sql(&self) -> Option<String> {
        self.fence.clone()
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
        record: Record,
        loss: LossWatch,
        proof: Instant,
    ) -> Result<Heartbeat> {
        let (commands, mut received) = tokio::sync::mpsc::unbounded_channel();
        let beater = Beater {
            session,
            statement,
            keep,
            record,
            loss,
            last_proof: proof,
            row_skipped: false,
            requested_by: None,
        };
        // If the thread cannot start, the session is dropped with the
        // closure: the lock is freed.
        let thread = thread::Builder::new()
            .name("onlyone-pg-heartbeat".into())
            .spawn(move || beater.run(&mut received))
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
    /// The holder's record, to write its row back.
    record: Record,
    loss: LossWatch,
    /// When the last heartbeat that was answered well was sent.
    last_proof: Instant,
    /// The last row check was cut short by the server (said once).
    row_skipped: bool,
    /// Who announced a stop request for this holder's token (the row
    /// decides whether there is one).
    requested_by: Option<String>,
}

impl Beater {
    fn run(mut self, commands: &mut Receiver<Command>) -> Result<()> {
        let mut due = Instant::now() + self.keep.interval;
        loop {
            match self.session.wait_until(due, commands) {
                Woken::Message(Some(Command::Release)) => return self.release(),
                Woken::Message(Some(Command::Abandon) | None) => {
                    self.session.close();
                    return Ok(());
                }
                Woken::Notified(payload) => {
                    self.announced(&payload);
                    continue;
                }
                Woken::Due => {}
            }
            due = Instant::now() + self.keep.interval;
            let sent = Instant::now();
            let left = self.keep.deadline.saturating_sub(self.last_proof.elapsed());
            if let Err(reason) = self.session.beat(&self.statement, self.keep.key, left) {
                self.loss.fire(reason);
                // Nothing more to do with this session: dropping it
                // frees the lock if the server still had it, and the
                // row keeps saying "held" so that the next holder
                // waits the lock-delay.
                self.session.abandon();
                return Ok(());
            }
            self.last_proof = sent;
            self.loss.proven(sent);
            match self.keep_row() {
                Ok(()) => {
                    if std::mem::take(&mut self.row_skipped) {
                        log::info!(
                            "lock '{}': its row in the state table {} is checked again",
                            self.keep.name,
                            self.keep.table.display
                        );
                    }
                }
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
    /// altered. Each statement runs within what is left of the heartbeat
    /// deadline, and the server cuts off its wait for the table (or the
    /// statement) after [`row_budget`]: a row that cannot be checked this
    /// beat (a migration queued behind a reader holds the table) is checked
    /// at the next one, and never holds up the heartbeat.
    fn keep_row(&mut self) -> std::result::Result<(), RowTrouble> {
        let Keep {
            name,
            key,
            holding,
            table,
            deadline,
            interval,
            fence: _,
        } = &self.keep;
        let left = || deadline.saturating_sub(self.last_proof.elapsed());
        let budget = || row_budget(*interval, left());
        let trouble = |doing: &str, failure: Failure| {
            let reason = format!(
                "{doing} its row in the state table {} failed ({})",
                table.display,
                failure.describe()
            );
            // The statement is prepared on the server process that
            // answers: another one not knowing it is a pooler's doing, as
            // in the heartbeat.
            if failure.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
                RowTrouble::SessionGone(format!(
                    "the PostgreSQL server session of the lock changed under the connection ({reason}): {POOLER_MESSAGE}"
                ))
            } else if failure.ends_session() {
                RowTrouble::SessionGone(reason)
            } else if failure.cut_short() {
                RowTrouble::Skipped(reason)
            } else {
                RowTrouble::CannotKeep(format!(
                    "{reason}: the row may no longer make the next holder wait for this command, so the lock is kept until the command has stopped"
                ))
            }
        };
        let (intact, stop_requested, answered_by) = table
            .holder_row_intact(&self.session, *key, holding, left(), budget())
            .map_err(|failure| trouble("reading", failure))?;
        // Another server process answering is a pooler's doing, as in the
        // heartbeat: what it reads is not this session's row.
        if let Err(err) = self.session.check_same_backend(answered_by.unwrap_or(0)) {
            return Err(RowTrouble::SessionGone(err.to_string()));
        }
        if intact {
            if stop_requested {
                let from = self
                    .requested_by
                    .clone()
                    .unwrap_or_else(|| "a requester whose announcement was missed".to_owned());
                self.loss.request_stop(from);
            }
            return Ok(());
        }
        log::warn!(
            "lock '{name}': its row in the state table {} was deleted or altered past the guard triggers; writing it back (token {})",
            table.display,
            holding.token
        );
        table
            .restore(
                &self.session,
                name,
                *key,
                &self.record,
                holding,
                left(),
                budget(),
            )
            .map_err(|failure| trouble("writing back", failure))
    }

    /// A stop request was announced on the key's channel, as `TOKEN
    /// HOST:PID`: for this holder's token, the row is read at once (it
    /// alone says whether the request stands: anyone who may connect can
    /// announce one). A request for another token (a holder replaced
    /// meanwhile) is ignored.
    fn announced(&mut self, payload: &str) {
        let Some((token, from)) = payload.split_once(' ') else {
            return;
        };
        if token.parse::<u64>().ok() != Some(self.keep.holding.token) {
            return;
        }
        self.requested_by = Some(from.to_owned());
        match self.keep_row() {
            // The row holds no request: the announcement was not one (anyone
            // may announce), and a request marked later is not this
            // announcer's.
            Ok(()) if self.loss.stop_requested().is_none() => {
                log::warn!(
                    "ignored a stop request announced as from {from}: the state row holds none (a request marks the row; anyone who may connect can announce)"
                );
                self.requested_by = None;
            }
            Ok(()) => {}
            // The next heartbeat finds out again, and decides.
            Err(RowTrouble::Skipped(reason))
            | Err(RowTrouble::SessionGone(reason))
            | Err(RowTrouble::CannotKeep(reason)) => {
                log::debug!(
                    "lock '{}': reading a stop request: {reason}",
                    self.keep.name
                );
            }
        }
    }

    /// After a loss declared while the lock is still held: keeps the
    /// session (its heartbeats keep the server from ending it as idle)
    /// until the guard is released or dropped, which the supervisor does
    /// once the command has stopped. Nothing is written: the row is not
    /// this holder's to vouch for any more.
    fn hold_until_dropped(mut self, commands: &mut Receiver<Command>) -> Result<()> {
        loop {
            let due = Instant::now() + self.keep.interval;
            loop {
                match self.session.wait_until(due, commands) {
                    Woken::Message(_) => {
                        self.session.close();
                        return Ok(());
                    }
                    Woken::Notified(_) => {}
                    Woken::Due => break,
                }
            }
            if self
                .session
                .beat(&self.statement, self.keep.key, self.keep.deadline)
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
        let deadline = release_deadline(Instant::now(), self.keep.deadline);
        let marked = self.keep.table.mark_released(
            &mut self.session,
            self.keep.key,
            self.keep.holding.token,
            deadline,
        );
        let unlocked = self.session.unlock(self.keep.key, deadline);
        self.session.close();
        marked.and(unlocked)
    }
}

/// The channel on which stop requests for advisory key `key` are
/// announced, as `pg_notify` takes it.
pub(super) fn stop_channel(key: i64) -> String {
    format!("onlyone_stop_{key}")
}

/// The same, quoted for `LISTEN`.
pub(super) fn stop_channel_sql(key: i64) -> String {
    format!("\"{}\"", stop_channel(key))
}

/// Why the holder's row could not be kept.
enum RowTrouble {
    /// The session is gone: the lock with it.
    SessionGone(String),
    /// The session still holds the lock, but the row cannot be read or
    /// written back.
    CannotKeep(String),
    /// The server cut the check short (a wait for the table): the row is
    /// checked again at the next heartbeat.
    Skipped(String),
}

/// How long the server lets the row check (or write-back) wait for the
/// table and run: half an interval, and at most half of what is left of
/// the deadline, so that the next heartbeat goes out on time.
pub(super) fn row_budget(interval: Duration, left: Duration) -> Duration {
    interval.min(left) / 2
}

/// When a clean release that starts at `now` must be done: max(T, 5 s)
/// later, or `now` + 5 s for a T too far away to represent.
pub(super) fn release_deadline(now: Instant, heartbeat_deadline: Duration) -> Instant {
    let budget = heartbeat_deadline.max(MIN_RELEASE_DEADLINE);
    now.checked_add(budget)
        .unwrap_or_else(|| now + MIN_RELEASE_DEADLINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_heartbeat_deadline_gives_a_release_deadline_without_panicking() {
        let now = Instant::now();
        assert_eq!(
            release_deadline(now, Duration::MAX),
            now + MIN_RELEASE_DEADLINE
        );
        assert_eq!(
            release_deadline(now, Duration::from_secs(7)),
            now + Duration::from_secs(7)
        );
    }
}
