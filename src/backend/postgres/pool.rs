//! A semaphore (`--max N`) on PostgreSQL: the slots `NAME@1` … `NAME@N`
//! are N advisory locks. A starter tries each slot on one session. When all
//! are held, the waiters of the pool queue in the server, one session each,
//! on the pool's queue key (the key of `NAME@queue`, derived as a lock
//! name's; `@` never appears in a lock name). The waiter at the head of
//! that queue waits on every slot at once, in a session per slot; the
//! first slot granted is its own, the other waits are cancelled, and the
//! queue key passes to the next waiter. W waiters use W + N sessions,
//! opened once: nothing polls.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::session::{ANSWER_DEADLINE, Canceller, Session};
use super::{PostgresBackend, application_name, derive_key};
use crate::backend::{Attempt, Wait};
use crate::error::{Error, Result};
use crate::name::LockName;

/// How often the cancels are sent again while waits are still running (a
/// cancel that reaches a session between two statements is ignored).
const RECANCEL_EVERY: Duration = Duration::from_millis(200);

impl PostgresBackend {
    /// One attempt at the first free slot of `names`: waits for a slot as
    /// `wait` says, and for a lock-delay until `delay_until` at most.
    pub(super) fn attempt_any_once(
        &self,
        names: &[LockName],
        command: &[String],
        wait: Wait,
        delay_until: Option<Instant>,
        lost: Option<(i64, u64)>,
    ) -> Result<Attempt> {
        let Some(first) = names.first() else {
            return Err(Error::usage("a semaphore needs at least one slot"));
        };
        let pool = first.base();
        let mut session = self.open(pool, delay_until)?;
        self.refuse_stopped_start(&mut session, names, lost)?;
        if let Some(name) = self.take_free_slot(&mut session, names)? {
            return self.hold(session, name, command, delay_until, lost);
        }
        let queue = queue_key(pool);
        if matches!(wait, Wait::No) || !session.lock(queue, wait)? {
            return self.no_slot(session, first);
        }
        // At the head of the queue. A slot may have freed meanwhile.
        if let Some(name) = self.take_free_slot(&mut session, names)? {
            session.unlock(queue, Instant::now() + ANSWER_DEADLINE)?;
            return self.hold(session, name, command, delay_until, lost);
        }
        let Wait::Until(deadline) = wait else {
            unreachable!("a single try does not queue");
        };
        match self.wait_for_any_slot(names, deadline)? {
            Some((slot_session, name)) => {
                // The next waiter becomes the head.
                session.close();
                self.hold(slot_session, name, command, delay_until, lost)
            }
            None => self.no_slot(session, first),
        }
    }

    /// Tries each slot on `session`; the one it took.
    fn take_free_slot<'a>(
        &self,
        session: &mut Session,
        names: &'a [LockName],
    ) -> Result<Option<&'a LockName>> {
        for name in names {
            if session.lock(self.key(name), Wait::No)? {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Every slot is held: the holder of the first, to show.
    fn no_slot(&self, mut session: Session, first: &LockName) -> Result<Attempt> {
        let holder = self.holder(&mut session, self.key(first));
        session.close();
        Ok(Attempt::Held(holder?))
    }

    /// Waits for every slot at once, each in a session of its own, until
    /// `deadline`: the first session granted its slot, with that slot.
    fn wait_for_any_slot<'a>(
        &self,
        names: &'a [LockName],
        deadline: Option<Instant>,
    ) -> Result<Option<(Session, &'a LockName)>> {
        let waits = SlotWaits::default();
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
        let mut session = Session::open(&self.target, &application_name(name.as_str()))?;
        // As for a plain lock (see `attempt_once`).
        session.expire_when_idle(self.idle_limit())?;
        if !waits.register(slot, session.canceller()) {
            session.close();
            return Ok(None);
        }
        match session.lock(self.key(name), Wait::Until(deadline)) {
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

/// Collects the slot waits: the first granted wins and the others are
/// cancelled (a session granted its slot anyway is closed, which frees
/// it). A wait that fails first fails them all.
fn first_granted<'a>(
    outcomes: &Receiver<(usize, Result<Option<Session>>)>,
    names: &'a [LockName],
    waits: &SlotWaits,
) -> Result<Option<(Session, &'a LockName)>> {
    let mut won: Option<(Session, &LockName)> = None;
    let mut failed: Option<Error> = None;
    loop {
        let outcome = if waits.stopped() {
            outcomes.recv_timeout(RECANCEL_EVERY)
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
            // The cancelled waits.
            Ok((_, Err(_))) => {}
            Err(RecvTimeoutError::Timeout) => waits.cancel_all(),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    match (won, failed) {
        (Some(won), _) => Ok(Some(won)),
        (None, Some(err)) => Err(err),
        (None, None) => Ok(None),
    }
}

/// The slot waits in progress, and whether they must stop.
#[derive(Default)]
struct SlotWaits(Mutex<Registry>);

#[derive(Default)]
struct Registry {
    stopped: bool,
    cancellers: Vec<(usize, Canceller)>,
}

impl SlotWaits {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the wait of `slot`; false when the waits are over.
    fn register(&self, slot: usize, canceller: Canceller) -> bool {
        let mut registry = self.registry();
        if !registry.stopped {
            registry.cancellers.push((slot, canceller));
        }
        !registry.stopped
    }

    fn stopped(&self) -> bool {
        self.registry().stopped
    }

    /// The wait of `slot` is over (and the winner's session goes on: it
    /// must never be cancelled).
    fn forget(&self, slot: usize) {
        self.registry().cancellers.retain(|(s, _)| *s != slot);
    }

    /// Ends every wait.
    fn stop(&self) {
        self.registry().stopped = true;
        self.cancel_all();
    }

    fn cancel_all(&self) {
        for (_, canceller) in &self.registry().cancellers {
            canceller.cancel();
        }
    }
}

/// The key the waiters of pool `pool` queue on.
fn queue_key(pool: &str) -> i64 {
    derive_key(&format!("{pool}@queue"))
}
