//! A semaphore (`--max N`) on MySQL/MariaDB, as on PostgreSQL: the slots
//! `NAME@1` … `NAME@N` are N named locks. A starter tries each slot on one
//! session. When all are held, the waiters of the pool queue in the server,
//! one session each, on the pool's queue lock (the lock name of
//! `NAME@queue`; `@` never appears in a lock name). The waiter at the head
//! of that queue waits on every slot at once, in a session per slot; the
//! first slot granted is its own, the other waits are ended (`KILL QUERY`),
//! and the queue lock passes to the next waiter. W waiters use W + N
//! sessions, opened once: nothing polls.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::session::{ANSWER_DEADLINE, Session};
use super::target::Target;
use super::{MysqlBackend, holder, map_name};
use crate::backend::{Attempt, Wait};
use crate::error::{Error, Result};
use crate::name::LockName;

/// How often the kills are sent again while waits are still running (a
/// kill that reaches a session between two rounds of its wait is lost).
const REKILL_EVERY: Duration = Duration::from_millis(200);

/// The idle limit of the session at the head of the queue while it waits
/// for a slot: a year, the server's largest `wait_timeout`.
const QUEUE_IDLE: u64 = 31_536_000;

/// ER_NO_SUCH_THREAD: the connection is gone already.
const NO_SUCH_THREAD: u16 = 1094;

impl MysqlBackend {
    /// One attempt at the first free slot of `names`: waits for a slot as
    /// `wait` says, and for a lock-delay until `delay_until` at most.
    pub(super) fn attempt_any_once(
        &self,
        names: &[LockName],
        command: &[String],
        wait: Wait,
        delay_until: Option<Instant>,
    ) -> Result<Attempt> {
        let Some(first) = names.first() else {
            return Err(Error::usage("a semaphore needs at least one slot"));
        };
        let queue = queue_lock(self.database(), first.base());
        let mut session = self.open()?;
        if let Some(name) = take_free_slot(self, &mut session, names)? {
            return self.hold_slot(session, name, command, delay_until);
        }
        if matches!(wait, Wait::No) || !session.get_lock(&queue, wait)? {
            return no_slot(self, session, first);
        }
        // At the head of the queue. A slot may have freed meanwhile.
        if let Some(name) = take_free_slot(self, &mut session, names)? {
            session.release_lock(&queue, Instant::now() + ANSWER_DEADLINE)?;
            return self.hold_slot(session, name, command, delay_until);
        }
        let Wait::Until(deadline) = wait else {
            unreachable!("a single try does not queue");
        };
        // The queue session sits idle while the slot sessions wait: the
        // server must not end it as idle (that would let the next waiter
        // become a second head). It never holds a slot from here on. A
        // head stopped while it waits keeps the queue until it is continued
        // or ended, as on PostgreSQL.
        session
            .execute(&format!(
                "SET SESSION wait_timeout = {QUEUE_IDLE}, SESSION interactive_timeout = {QUEUE_IDLE}"
            ))
            .map_err(|failure| session.error("configuring the queue session", failure))?;
        match self.wait_for_any_slot(names, deadline)? {
            Some((slot_session, name)) => {
                // The next waiter becomes the head.
                session.close();
                self.hold_slot(slot_session, name, command, delay_until)
            }
            None => no_slot(self, session, first),
        }
    }

    fn hold_slot(
        &self,
        session: Session,
        name: &LockName,
        command: &[String],
        delay_until: Option<Instant>,
    ) -> Result<Attempt> {
        let lock_name = self.lock_name_for(name);
        self.hold(session, name, &lock_name, command, delay_until)
    }

    /// Waits for every slot at once, each in a session of its own, until
    /// `deadline`: the first session granted its slot, with that slot.
    fn wait_for_any_slot<'a>(
        &self,
        names: &'a [LockName],
        deadline: Option<Instant>,
    ) -> Result<Option<(Session, &'a LockName)>> {
        let waits = SlotWaits::new(self.target.clone(), self.idle_limit());
        let (sender, outcomes) = mpsc::channel();
        thread::scope(|scope| {
            for (slot, name) in names.iter().enumerate() {
                let (sender, waits) = (sender.clone(), &waits);
                scope.spawn(move || {
                    let outcome = self.wait_for_slot(slot, name, deadline, waits);
                    let _ = sender.send((slot, outcome));
                });
            }
            drop(sender);
            first_granted(&outcomes, names, &waits)
        })
    }

    /// One slot's wait: its session if it was granted the slot.
    fn wait_for_slot(
        &self,
        slot: usize,
        name: &LockName,
        deadline: Option<Instant>,
        waits: &SlotWaits,
    ) -> Result<Option<Session>> {
        let mut session = Session::open(&self.target, self.idle_limit())?;
        if !waits.register(slot, session.id()) {
            session.close();
            return Ok(None);
        }
        match session.get_lock(&self.lock_name_for(name), Wait::Until(deadline)) {
            Ok(true) => Ok(Some(session)),
            Ok(false) => {
                session.close();
                Ok(None)
            }
            Err(err) => {
                session.abandon();
                Err(err)
            }
        }
    }
}

/// Tries each slot on `session`; the one it took.
fn take_free_slot<'a>(
    backend: &MysqlBackend,
    session: &mut Session,
    names: &'a [LockName],
) -> Result<Option<&'a LockName>> {
    for name in names {
        if session.get_lock(&backend.lock_name_for(name), Wait::No)? {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Every slot is held: the holder of the first, to show.
fn no_slot(backend: &MysqlBackend, mut session: Session, first: &LockName) -> Result<Attempt> {
    let holder = holder(&mut session, &backend.lock_name_for(first));
    session.close();
    Ok(Attempt::Held(holder?))
}

/// Collects the slot waits: the first granted wins and the others are
/// ended (a session granted its slot anyway is closed, which frees it). A
/// wait that fails first fails them all.
fn first_granted<'a>(
    outcomes: &Receiver<(usize, Result<Option<Session>>)>,
    names: &'a [LockName],
    waits: &SlotWaits,
) -> Result<Option<(Session, &'a LockName)>> {
    let mut won: Option<(Session, &LockName)> = None;
    let mut failed: Option<Error> = None;
    loop {
        let outcome = if waits.stopped() {
            outcomes.recv_timeout(REKILL_EVERY)
        } else {
            outcomes.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        if let Ok((slot, _)) = &outcome {
            waits.forget(*slot);
        }
        match outcome {
            Ok((slot, Ok(Some(session)))) if !waits.stopped() => {
                waits.stop();
                won = Some((session, &names[slot]));
            }
            Ok((_, Ok(Some(session)))) => session.close(),
            Ok((_, Ok(None))) => {}
            Ok((_, Err(err))) if !waits.stopped() => {
                waits.stop();
                failed = Some(err);
            }
            // The ended waits.
            Ok((_, Err(_))) => {}
            Err(RecvTimeoutError::Timeout) => waits.kill_all(),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    match (won, failed) {
        (Some(won), _) => Ok(Some(won)),
        (None, Some(err)) => Err(err),
        (None, None) => Ok(None),
    }
}

/// The slot waits in progress (their connection ids), and whether they
/// must stop.
struct SlotWaits {
    target: Target,
    idle_limit: Duration,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    stopped: bool,
    waiting: Vec<(usize, u64)>,
}

impl SlotWaits {
    fn new(target: Target, idle_limit: Duration) -> SlotWaits {
        SlotWaits {
            target,
            idle_limit,
            registry: Mutex::default(),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the wait of `slot` on connection `id`; false when the
    /// waits are over.
    fn register(&self, slot: usize, id: u64) -> bool {
        let mut registry = self.registry();
        if !registry.stopped {
            registry.waiting.push((slot, id));
        }
        !registry.stopped
    }

    fn stopped(&self) -> bool {
        self.registry().stopped
    }

    /// The wait of `slot` is over (and the winner's session goes on: it
    /// must never be killed).
    fn forget(&self, slot: usize) {
        self.registry().waiting.retain(|(s, _)| *s != slot);
    }

    /// Ends every wait.
    fn stop(&self) {
        self.registry().stopped = true;
        self.kill_all();
    }

    /// `KILL QUERY` of every wait still registered, from a session of its
    /// own; failures are logged (the wait then ends at its deadline, or
    /// when granted, and is closed).
    fn kill_all(&self) {
        let ids: Vec<u64> = self.registry().waiting.iter().map(|(_, id)| *id).collect();
        if ids.is_empty() {
            return;
        }
        let mut session = match Session::open(&self.target, self.idle_limit) {
            Ok(session) => session,
            Err(err) => {
                log::warn!("ending the other slot waits: {err}");
                return;
            }
        };
        for id in ids {
            match session.execute(&format!("KILL QUERY {id}")) {
                Ok(()) => {}
                Err(failure) if failure.code() == Some(NO_SUCH_THREAD) => {}
                Err(failure) => log::warn!("ending a slot wait: {}", failure.describe()),
            }
        }
        session.close();
    }
}

/// The lock the waiters of pool `pool` queue on, mapped as a lock name's
/// (`@queue` is not a slot number: never a slot's name), in `database`.
fn queue_lock(database: &str, pool: &str) -> String {
    map_name(database, &format!("{pool}@queue"))
}
