//! Many names on few sessions (the library, when asked for with
//! [`PostgresBackend::share_sessions`]): a backend keeps at most a few
//! lock sessions, each owned by one thread that takes, checks and lets go
//! of every name placed on it.
//!
//! - **A key is never taken twice on one session.** Advisory locks are
//!   re-entrant per session: the pool keeps the keys its sessions hold (or
//!   are taking), and a second acquisition of one of them in this process
//!   is refused as held, or, when it may wait, waits on a dedicated session
//!   in the server's lock queue, before the server is ever asked.
//! - **One heartbeat per session checks all its names**: one statement
//!   every interval reads `pg_backend_pid()`, `pg_is_in_recovery()` and
//!   the session's granted advisory keys from `pg_locks`; each name is
//!   proven by it if its key is there (the send time counts for all). Then
//!   one statement checks every name's row (`unnest` of the keys).
//! - **A lost session loses all its names at once**: a heartbeat that
//!   fails or is not answered within T of the last good one, or any
//!   statement of the session that fails so, fires every name's loss
//!   watch, and the session is dropped. Every statement of the session,
//!   acquisitions and releases included, is cut off at the last good
//!   heartbeat + T (the session's cutoff), so that no work on one name
//!   delays the others' loss past their deadline.
//! - **What stays per name**: the state row, the token's transaction, the
//!   lock-delay (waited by the caller's thread while the session's
//!   heartbeat goes on), the pool/plain check, the fence. A token that
//!   would have to wait for the previous holder's fenced transactions (no
//!   deadline) is not waited for here: the key is let go of at once, and
//!   the name is taken on a dedicated session, as without sharing.
//! - **A child made by fork** never uses its parent's sessions: the pool
//!   remembers the process that made it, and a child starts an empty one;
//!   a guard inherited by a child lets nothing go.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_postgres::error::SqlState;

use super::acquire::{lost_before_start, stopped_before_start};
use super::cancel;
use super::failure::Failure;
use super::heartbeat::{release_deadline, row_budget, stop_channel_sql};
use super::session::{ANSWER_DEADLINE, Session, Woken};
use super::state::Holding;
use super::{LOCK_DELAY_MARGIN, PostgresBackend};
use crate::backend::{Attempt, Guard, Held, Holder, LossWatch, Wait};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;

/// The most sessions one backend may share its names over.
pub(super) const MAX_SHARED_SESSIONS: usize = 8;

/// How many names a session takes before the pool opens another (while
/// it may): a few names need no second server process.
const NAMES_BEFORE_ANOTHER: usize = 64;

/// The one statement of a shared session's heartbeat: which server
/// process answers, whether it is a standby, and every advisory key this
/// session holds (`(classid << 32) | objid`, the bigint key).
const BEAT: &str = "SELECT pg_backend_pid(), pg_is_in_recovery(), \
     coalesce((SELECT array_agg((l.classid::bigint << 32) | l.objid::bigint) FROM pg_locks l \
               WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted \
                 AND l.pid = pg_backend_pid()), '{}'::bigint[])";

/// The shared sessions of one backend, and the keys they hold.
pub(super) struct Pool {
    max: usize,
    state: Mutex<PoolState>,
    /// Held by the one thread opening a session (never with `state`
    /// held by it).
    opening: Mutex<()>,
}

struct PoolState {
    /// The process the sessions belong to: a child made by fork has none.
    pid: u32,
    sessions: Vec<Arc<Slot>>,
    /// Every key held, or being taken, on these sessions.
    keys: HashSet<i64>,
}

/// One shared session, as the pool and the guards on it see it.
struct Slot {
    requests: UnboundedSender<Request>,
    shared: Arc<SlotState>,
    location: String,
}

/// What the session's thread and the pool both see.
#[derive(Default)]
struct SlotState {
    /// Names placed on the session (held, or being taken).
    names: AtomicUsize,
    /// Cleared by the thread when the session is lost.
    alive: AtomicBool,
}

impl Slot {
    fn alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }
}

/// What the session's thread is asked to do.
enum Request {
    /// Take `name` if it is free, record it, and keep it.
    Take {
        name: LockName,
        record: Box<Record>,
        lost: Option<(i64, u64)>,
        reply: std_mpsc::SyncSender<Result<Taken>>,
    },
    /// Let go of `key`: cleanly (row marked `released`), or not (the row
    /// keeps saying `held`, so that the next holder waits the lock-delay).
    Let {
        key: i64,
        clean: bool,
        reply: std_mpsc::SyncSender<Result<()>>,
    },
}

/// How a take went.
enum Taken {
    Held {
        token: u64,
        previous_was_held: bool,
        owed: Duration,
        loss: LossWatch,
    },
    /// Someone else holds it.
    Busy(Box<Holder>),
    /// To be taken on a dedicated session instead: the previous holder's
    /// fenced transactions still run (the key was let go of), or the state
    /// table is to be made or migrated (nothing was taken).
    Dedicated,
}

impl Pool {
    pub(super) fn new(max: usize) -> Pool {
        Pool {
            max,
            state: Mutex::new(PoolState {
                pid: std::process::id(),
                sessions: Vec::new(),
                keys: HashSet::new(),
            }),
            opening: Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A child made by fork: its parent's sessions are not its own
        // (their threads did not come along, their sockets are the
        // parent's). They are forgotten, never closed.
        if state.pid != std::process::id() {
            let parents = std::mem::take(&mut state.sessions);
            std::mem::forget(parents);
            state.keys.clear();
            state.pid = std::process::id();
        }
        state
    }

    /// Places `key` on a session: `None` when this process already holds
    /// it (or is taking it) on one of them.
    ///
    /// A new session is opened with the state unlocked (under `opening`
    /// only): a connection that hangs (a frozen network, up to the connect
    /// timeout) must not hold up the releases and takes of names on the
    /// sessions there are.
    fn reserve(
        &self,
        backend: &PostgresBackend,
        key: i64,
        deadline: Option<Instant>,
    ) -> Result<Option<Arc<Slot>>> {
        let mut opening = None;
        loop {
            let mut state = self.state();
            if state.keys.contains(&key) {
                return Ok(None);
            }
            state.sessions.retain(|slot| slot.alive());
            let least = state
                .sessions
                .iter()
                .min_by_key(|slot| slot.shared.names.load(Ordering::SeqCst))
                .cloned();
            let slot = match least {
                Some(slot)
                    if state.sessions.len() >= self.max
                        || slot.shared.names.load(Ordering::SeqCst) < NAMES_BEFORE_ANOTHER =>
                {
                    slot
                }
                _ if opening.is_none() => {
                    // One opener at a time (so that no more than `max`
                    // are opened); then the state is looked at again.
                    drop(state);
                    opening = Some(self.opening.lock().unwrap_or_else(|e| e.into_inner()));
                    continue;
                }
                _ => {
                    drop(state);
                    let slot = Arc::new(backend.open_shared(deadline)?);
                    let mut state = self.state();
                    state.sessions.push(slot.clone());
                    if state.keys.contains(&key) {
                        return Ok(None);
                    }
                    state.keys.insert(key);
                    slot.shared.names.fetch_add(1, Ordering::SeqCst);
                    return Ok(Some(slot));
                }
            };
            state.keys.insert(key);
            slot.shared.names.fetch_add(1, Ordering::SeqCst);
            return Ok(Some(slot));
        }
    }

    /// `key` is no longer on `slot` (let go of, or never taken).
    fn forget(&self, key: i64, slot: &Slot) {
        let mut state = self.state();
        state.keys.remove(&key);
        slot.shared.names.fetch_sub(1, Ordering::SeqCst);
    }

    /// The server processes of the sessions open now (for tests and
    /// benchmarks: `pg_stat_activity` shows them as `onlyone:shared@…`).
    pub(super) fn sessions(&self) -> usize {
        let mut state = self.state();
        state.sessions.retain(|slot| slot.alive());
        state.sessions.len()
    }
}

/// A key placed on a slot, given back unless a guard keeps it.
struct Placed {
    pool: Arc<Pool>,
    slot: Arc<Slot>,
    key: i64,
    kept: bool,
}

impl Drop for Placed {
    fn drop(&mut self) {
        if !self.kept {
            self.pool.forget(self.key, &self.slot);
        }
    }
}

impl PostgresBackend {
    /// The same backend without a pool: what a session's thread uses.
    fn unshared(&self) -> PostgresBackend {
        PostgresBackend {
            config: self.config.clone(),
            target: self.target.clone(),
            table: self.table.clone(),
            shared: None,
        }
    }

    /// Opens a shared session and starts its thread.
    fn open_shared(&self, deadline: Option<Instant>) -> Result<Slot> {
        let mut session = self.open("shared", deadline)?;
        // The same few statements for every name: prepared once each.
        session.keep_statements();
        // As a holder's session: the server ends it once its heartbeats
        // stop (a stopped or cut-off process), which frees every key.
        session.expire_when_idle(self.idle_limit())?;
        let proof = Instant::now();
        session
            .batch("SELECT 1")
            .map_err(|failure| session.error("checking the shared session", failure))?;
        let (requests, mut received) = unbounded_channel();
        let shared = Arc::new(SlotState::default());
        shared.alive.store(true, Ordering::SeqCst);
        let location = session.location().to_owned();
        let worker = Worker {
            backend: self.unshared(),
            session,
            shared: shared.clone(),
            names: HashMap::new(),
            last_proof: proof,
            rows_skipped: false,
        };
        thread::Builder::new()
            .name("onlyone-pg-shared".into())
            .spawn(move || worker.run(&mut received))
            .map_err(|err| {
                Error::unavailable("cannot start the PostgreSQL shared session's thread")
                    .with_source(err)
            })?;
        Ok(Slot {
            requests,
            shared,
            location,
        })
    }

    /// One attempt at `name` on a shared session: `None` when it must be
    /// made on a dedicated session instead (a wait in the server's lock
    /// queue, or a token that must wait for fenced transactions).
    pub(super) fn attempt_shared(
        &self,
        pool: &Arc<Pool>,
        name: &LockName,
        command: &[String],
        wait: Wait,
        delay_until: Option<Instant>,
        lost: Option<(i64, u64)>,
    ) -> Result<Option<Attempt>> {
        let key = self.key(name);
        let busy = |holder: Holder| match wait {
            Wait::No => Ok(Some(Attempt::Held(holder))),
            Wait::Until(_) => Ok(None),
        };
        // A session found lost between the placing and the take: once
        // more on another.
        for _ in 0..2 {
            let Some(slot) = pool.reserve(self, key, delay_until)? else {
                return busy(Holder {
                    pids: vec![std::process::id()],
                    detail: Some(
                        "this process, on one of its shared PostgreSQL sessions".to_owned(),
                    ),
                    ..Holder::default()
                });
            };
            let mut placed = Placed {
                pool: pool.clone(),
                slot,
                key,
                kept: false,
            };
            let mut record = Record::for_current_process(command, 0);
            let (reply, answer) = std_mpsc::sync_channel(1);
            let request = Request::Take {
                name: name.clone(),
                record: Box::new(record.clone()),
                lost,
                reply,
            };
            if placed.slot.requests.send(request).is_err() {
                continue;
            }
            let Some(taken) = answer_of(&answer, &placed.slot.requests) else {
                continue;
            };
            let (token, previous_was_held, owed, loss) = match taken? {
                Taken::Busy(holder) => return busy(*holder),
                Taken::Dedicated => return Ok(None),
                Taken::Held {
                    token,
                    previous_was_held,
                    owed,
                    loss,
                } => (token, previous_was_held, owed, loss),
            };
            record.token = token;
            placed.kept = true;
            let held = SharedHeld {
                name: name.clone(),
                key,
                location: super::key_location(&placed.slot.location, key),
                record,
                token,
                fence: Some(match self.config.key {
                    None => self.table.fence_sql(name, token),
                    Some(_) => super::table::Table::unfenceable_sql(name),
                }),
                loss,
                pid: std::process::id(),
                placed: Some(placed),
            };
            if !previous_was_held {
                return Ok(Some(Attempt::Acquired(Guard::new(Box::new(held)))));
            }
            // As on a dedicated session (see `hold`): the caller waits,
            // the session's heartbeat goes on.
            let delay = owed.max(self.lock_delay());
            log::warn!(
                "lock '{name}': the previous holder did not release it cleanly (it crashed, was killed, or lost its database session); waiting the lock-delay of {} so that its command has time to stop",
                humantime::format_duration(delay)
            );
            let _cancellable = cancel::lock_delay(held.loss.clone());
            let until = Instant::now().checked_add(delay);
            let bounded = match (until, delay_until) {
                (Some(until), Some(deadline)) if deadline < until => Some(deadline),
                (None, Some(deadline)) => Some(deadline),
                (until, _) => until,
            };
            let left = bounded.map(|at| at.saturating_duration_since(Instant::now()));
            if let Some(reason) = held.loss.wait(left) {
                return Err(Error::lost(format!(
                    "lost lock '{name}' during its lock-delay, before its command started: {reason}"
                ))
                .ending_session(true)
                .losing_start(key, token));
            }
            return Ok(Some(if bounded == until {
                Attempt::Acquired(Guard::new(Box::new(held)))
            } else {
                // Dropped: let go of, the row left 'held'.
                Attempt::Held(Holder {
                    lock_delay: Some(delay),
                    ..Holder::default()
                })
            }));
        }
        Err(Error::unavailable(format!(
            "the shared PostgreSQL sessions to {} ended while lock '{name}' was being taken",
            self.target.location
        ))
        .ending_session(true))
    }
}

/// How often a caller waiting for its session's thread looks whether the
/// thread is gone (see [`answer_of`]).
const GONE_CHECK: Duration = Duration::from_millis(20);

/// The answer to a request sent on `requests`, or `None` once the session's
/// thread is gone without one. A request sent while the thread was ending
/// (after it stopped reading, as its channel closed) can be left in the
/// channel, never answered and never dropped (the pool's senders keep the
/// channel, and the request its reply sender): a wait for the reply alone
/// never ended. So the wait also ends once the channel is closed, which
/// the thread's end does: its answers, if any, were sent before.
fn answer_of<T>(answer: &std_mpsc::Receiver<T>, requests: &UnboundedSender<Request>) -> Option<T> {
    loop {
        match answer.recv_timeout(GONE_CHECK) {
            Ok(value) => return Some(value),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(std_mpsc::RecvTimeoutError::Timeout) if requests.is_closed() => {
                return answer.try_recv().ok();
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// A name held on a shared session.
#[derive(Debug)]
struct SharedHeld {
    name: LockName,
    key: i64,
    location: String,
    record: Record,
    token: u64,
    fence: Option<String>,
    loss: LossWatch,
    /// The process that took it: a child made by fork lets nothing go.
    pid: u32,
    /// Until let go of.
    placed: Option<Placed>,
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placed").field("key", &self.key).finish()
    }
}

impl SharedHeld {
    fn let_go(&mut self, clean: bool) -> Result<()> {
        let Some(placed) = self.placed.take() else {
            return Ok(());
        };
        if std::process::id() != self.pid {
            // The parent's lock, on the parent's session.
            std::mem::forget(placed);
            return Ok(());
        }
        let (reply, answer) = std_mpsc::sync_channel(1);
        let request = Request::Let {
            key: self.key,
            clean,
            reply,
        };
        // A thread gone took its session, and every key on it, along.
        let done = match placed.slot.requests.send(request) {
            Ok(()) => answer_of(&answer, &placed.slot.requests).unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        let mut placed = placed;
        placed.kept = false;
        drop(placed);
        done
    }
}

impl Held for SharedHeld {
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

    fn inheritable_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        Vec::new()
    }

    fn loss(&self) -> &LossWatch {
        &self.loss
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        self.let_go(true)
    }
}

impl Drop for SharedHeld {
    fn drop(&mut self) {
        if let Err(err) = self.let_go(false) {
            log::warn!("letting go of lock '{}': {err}", self.name);
        }
    }
}

/// One name held on the session.
struct Entry {
    name: LockName,
    holding: Holding,
    record: Record,
    loss: LossWatch,
    /// Its row is still this holder's to keep (not after a loss declared
    /// while the key is still held: then it is held, unchecked, until
    /// let go of, as a dedicated holder does).
    kept: bool,
    /// Who announced a stop request for its token.
    requested_by: Option<String>,
}

/// The thread of one shared session: it alone uses the session.
struct Worker {
    backend: PostgresBackend,
    session: Session,
    shared: Arc<SlotState>,
    names: HashMap<i64, Entry>,
    /// When the last good heartbeat (or the session's first statement)
    /// was sent: it vouches for every name until + T.
    last_proof: Instant,
    rows_skipped: bool,
}

/// Why the session must be dropped, with every name on it.
struct Lost(String);

impl Worker {
    fn deadline(&self) -> Duration {
        self.backend.heartbeat_deadline()
    }

    fn run(mut self, requests: &mut UnboundedReceiver<Request>) {
        let interval = self.backend.config.timing.heartbeat;
        let mut due = Instant::now() + interval;
        loop {
            // A panic while serving (a row that no longer decodes, say)
            // would end the thread, and with it the session and every key
            // on it, without a word to the guards: the names are lost
            // first, as on any other failure.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.step(requests, interval, &mut due)
            }));
            match step {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    // Every guard and the pool are gone.
                    self.session.close();
                    return;
                }
                Ok(Err(lost)) => return self.lose(lost),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    let reason = format!(
                        "the thread of the shared PostgreSQL session to {} failed ({what}); the lock must be considered gone",
                        self.session.location()
                    );
                    return self.lose(Lost(reason));
                }
            }
        }
    }

    /// One turn of [`Worker::run`]: false once every guard and the pool
    /// are gone.
    fn step(
        &mut self,
        requests: &mut UnboundedReceiver<Request>,
        interval: Duration,
        due: &mut Instant,
    ) -> std::result::Result<bool, Lost> {
        // Due first: a stream of requests must not hold the heartbeat up.
        if Instant::now() >= *due {
            *due = Instant::now() + interval;
            self.beat()?;
        }
        match self.session.wait_until(*due, requests) {
            Woken::Message(Some(request)) => self.serve(request)?,
            Woken::Message(None) => return Ok(false),
            Woken::Notified(payload) => self.announced(&payload)?,
            Woken::Due => {}
        }
        if !self.names.is_empty() && self.last_proof.elapsed() >= self.deadline() {
            return Err(Lost(format!(
                "no heartbeat answer from PostgreSQL at {} within the heartbeat deadline on the shared session",
                self.session.location()
            )));
        }
        Ok(true)
    }

    /// Every statement is answered by the last proof + T, while names are
    /// held.
    fn cut_off(&mut self) {
        let cutoff = (!self.names.is_empty())
            .then(|| self.last_proof.checked_add(self.deadline()))
            .flatten();
        self.session.set_cutoff(cutoff);
    }

    /// The session is lost: so is every name on it, at once.
    fn lose(self, Lost(reason): Lost) {
        self.shared.alive.store(false, Ordering::SeqCst);
        // Every name is lost before any callback runs, and the callbacks
        // run apart (see `run_apart`).
        run_apart(
            self.names
                .values()
                .filter_map(|entry| entry.loss.fire_deferred(reason.clone()))
                .collect(),
        );
        log::debug!(
            "the shared PostgreSQL session is lost with {} names: {reason}",
            self.names.len()
        );
        self.session.abandon();
    }

    fn serve(&mut self, request: Request) -> std::result::Result<(), Lost> {
        self.cut_off();
        // A wait for the state table or a row, locked by another
        // transaction (`VACUUM FULL`, `LOCK TABLE`, an operator's `FOR
        // UPDATE`), fails this request, not the session and every name on
        // it: bounded by half of what is left before the cutoff.
        let left = self
            .last_proof
            .checked_add(self.deadline())
            .map_or(Duration::ZERO, |cutoff| {
                cutoff.saturating_duration_since(Instant::now())
            });
        let millis = (left / 2).as_millis().max(1);
        // Both settings go with the next statement, in its round trip: the
        // bound with the request's first, the reset with whatever comes
        // next (a heartbeat, the next request). A failure to set either is
        // that statement's.
        self.session
            .send_ahead(&format!("SET lock_timeout = {millis}"));
        self.serve_bounded(request)?;
        // A take may have placed the session's first name: from now on
        // every statement is cut off at the cutoff.
        self.cut_off();
        self.session.send_ahead("SET lock_timeout = 0");
        Ok(())
    }

    fn serve_bounded(&mut self, request: Request) -> std::result::Result<(), Lost> {
        match request {
            Request::Take {
                name,
                record,
                lost,
                reply,
            } => {
                let key = self.backend.key(&name);
                let taken = self.take(&name, key, *record, lost);
                let ended = match &taken {
                    Err(err) if err.ended_session() => Some(err.to_string()),
                    _ => None,
                };
                let _ = reply.send(taken);
                match ended {
                    Some(reason) => Err(Lost(reason)),
                    None => Ok(()),
                }
            }
            Request::Let { key, clean, reply } => {
                let done = self.let_go(key, clean);
                let ended = match &done {
                    Err(err) if err.ended_session() => Some(err.to_string()),
                    _ => None,
                };
                let _ = reply.send(done);
                match ended {
                    // The key may still be held with nobody to let go of
                    // it: the session goes.
                    Some(reason) => Err(Lost(reason)),
                    None => Ok(()),
                }
            }
        }
    }

    /// Takes `key` for `name` (see `hold` for the steps, the same here).
    /// On an error, the key is let go of (or the error ends the session).
    fn take(
        &mut self,
        name: &LockName,
        key: i64,
        record: Record,
        lost: Option<(i64, u64)>,
    ) -> Result<Taken> {
        if self.names.contains_key(&key) {
            // The pool's key table keeps this from happening.
            return Err(Error::unsafe_(format!(
                "lock '{name}' is already held on this shared session"
            )));
        }
        // Every acquisition checks the table's catalog facts, as on a
        // dedicated session (a trigger disabled or a function replaced
        // since an earlier one is seen); making or migrating it waits for
        // other sessions, which a shared session must not.
        if !self.backend.table.is_current(&mut self.session)? {
            return Ok(Taken::Dedicated);
        }
        if !self.session.lock(key, Wait::No)? {
            return Ok(Taken::Busy(Box::new(
                self.backend.holder(&mut self.session, key)?,
            )));
        }
        match self.record(name, key, record, lost) {
            Ok(Some(taken)) => Ok(taken),
            Ok(None) => {
                self.unlock(key)?;
                Ok(Taken::Dedicated)
            }
            Err(err) => {
                if !err.ended_session() {
                    self.unlock(key)?;
                    // It may have listened (with the token's commit).
                    self.session
                        .send_ahead(&format!("UNLISTEN {}", stop_channel_sql(key)));
                }
                Err(err)
            }
        }
    }

    fn unlock(&mut self, key: i64) -> Result<()> {
        let deadline = Instant::now() + ANSWER_DEADLINE;
        self.session.unlock(key, deadline).map_err(|err| {
            // Held with nobody to let go of it: the session must end.
            err.ending_session(true)
        })
    }

    /// With `key` taken: the steps of `hold`, on this session. `None`:
    /// fenced transactions must be waited for, or the row is locked by
    /// another transaction (nothing recorded): a dedicated session waits.
    fn record(
        &mut self,
        name: &LockName,
        key: i64,
        mut record: Record,
        lost: Option<(i64, u64)>,
    ) -> Result<Option<Taken>> {
        let backend = &self.backend;
        let session = &mut self.session;
        backend.refuse_stopped_start(session, std::slice::from_ref(name), lost)?;
        backend
            .table
            .refuse_other_tables(session, key)
            .map_err(lost_before_start)?;
        let lost_here = lost.filter(|(lost_key, _)| *lost_key == key);
        // The row, taken with a wait shorter than the session's cutoff:
        // a row (or the table) locked by another transaction (an
        // operator's, a fenced one begun since) costs this name its take
        // on the shared session, not every name on it their locks.
        let left = self
            .last_proof
            .checked_add(self.backend.heartbeat_deadline())
            .map_or(Duration::ZERO, |cutoff| {
                cutoff.saturating_duration_since(Instant::now())
            });
        // The token's transaction, excluding fenced transactions now (as
        // `begin_excluding_fenced_now`), and the row locked only if they
        // are excluded: one round trip. Both a fence key still taken and
        // a row locked elsewhere send the name to a dedicated session.
        let begin = format!(
            "BEGIN; SET LOCAL lock_timeout = {millis}; \
             SELECT f.free, (SELECT count(*) FROM (SELECT 1 FROM {table} \
                             WHERE key = {key} AND f.free FOR UPDATE) r) \
             FROM (SELECT pg_try_advisory_xact_lock('{fence}'::bigint) AS free) f",
            millis = (left / 2).as_millis().max(1),
            table = backend.table.sql,
            fence = super::fence::fence_key(name),
        );
        let begun = match session.simple_query_row(&begin) {
            Ok(row) => Ok(row
                .and_then(|row| row.into_iter().next().flatten())
                .as_deref()
                == Some("t")),
            Err(failure) if failure.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
            Err(failure) => Err(session.error("waiting for fenced transactions", failure)),
        };
        let recorded = match begun {
            Ok(true) => backend.table.record_acquisition(
                session,
                name,
                key,
                &record,
                backend.stop_within(),
                LOCK_DELAY_MARGIN,
                lost_here.map(|(_, token)| token),
            ),
            Ok(false) => {
                session
                    .batch("ROLLBACK")
                    .map_err(|failure| session.error("ending the transaction", failure))?;
                return Ok(None);
            }
            Err(err) => Err(err),
        };
        // With the token recorded: the stop channel is listened to from
        // the commit on (a LISTEN in a transaction takes effect at its
        // commit, and is undone with it), and the pool/plain check is sent
        // in the same round trip, run after the commit.
        let check = match recorded {
            Ok(Some(_)) => Some(backend.pool_and_plain_check(name)),
            _ => None,
        };
        let proof = Instant::now();
        let (ended, mix) = match &check {
            Some(Ok(check)) => {
                let (ended, rows) = session.batch_then_query_typed(
                    &format!("LISTEN {}; COMMIT", stop_channel_sql(key)),
                    &check.sql,
                    &check.params(),
                );
                let mix = rows
                    .map(|rows| check.read(&rows))
                    .map_err(|failure| session.error(check.doing(), failure));
                (ended, Some(mix))
            }
            _ => (session.batch("ROLLBACK"), None),
        };
        let recorded = match (ended, check) {
            (Ok(()), Some(Err(err))) => Err(err),
            (Ok(()), _) => recorded,
            (Err(failure), _) => {
                let err = session.error("recording the fencing token", failure);
                if !err.ended_session() {
                    // A LISTEN that failed left the transaction aborted.
                    session.send_ahead("ROLLBACK");
                }
                recorded.and(Err(err))
            }
        }
        .map_err(lost_before_start)?;
        let Some(acquisition) = recorded else {
            let token = lost_here.map_or(0, |(_, token)| token);
            return Err(stopped_before_start(name, token));
        };
        let token = acquisition.token;
        record.token = token;
        let mix = match mix {
            Some(mix) => mix,
            None => backend.pool_and_plain_mix(session, name),
        };
        if let Some((other, held)) =
            mix.map_err(|err| lost_before_start(err).losing_start(key, token))?
        {
            // Let go of at once (by `take`). Nothing ran, so the release
            // is clean, unless a previous holder's command may still run.
            if !acquisition.previous_was_held {
                let deadline = Instant::now() + self.backend.heartbeat_deadline();
                self.backend
                    .table
                    .mark_released(&mut self.session, key, token, deadline)?;
            }
            let base = LockName::new(name.base())?;
            return Err(if held {
                crate::backend::pool_and_plain_mix(&base, &other)
            } else {
                crate::backend::pool_and_plain_mix_unreleased(&base, &other)
            });
        }
        let loss = LossWatch::proven_by_checks(self.backend.heartbeat_deadline());
        loss.proven(proof);
        self.names.insert(
            key,
            Entry {
                name: name.clone(),
                holding: Holding {
                    token,
                    stop_within: self.backend.stop_within(),
                    owed: acquisition.owed,
                },
                record,
                loss: loss.clone(),
                kept: true,
                requested_by: None,
            },
        );
        Ok(Some(Taken::Held {
            token,
            previous_was_held: acquisition.previous_was_held,
            owed: acquisition.owed,
            loss,
        }))
    }

    /// Lets go of `key`: a clean release marks the row first (not after a
    /// loss: the row is no longer this holder's to vouch for).
    fn let_go(&mut self, key: i64, clean: bool) -> Result<()> {
        let Some(entry) = self.names.remove(&key) else {
            // Lost already (its key is not held on this session).
            return Ok(());
        };
        let deadline = release_deadline(Instant::now(), self.deadline());
        let marked = if clean && entry.kept && entry.loss.reason().is_none() {
            self.backend
                .table
                .mark_released(&mut self.session, key, entry.holding.token, deadline)
        } else {
            Ok(())
        };
        if let Err(err) = &marked
            && err.ended_session()
        {
            return marked;
        }
        // Not unlocked: the key may still be held, with nobody to let go
        // of it, so the session goes.
        self.session
            .unlock(key, deadline)
            .map_err(|err| err.ending_session(true))?;
        // Sent with the next statement: a stop request announced for the
        // key meanwhile only makes the rows be read (no name has its token).
        self.session
            .send_ahead(&format!("UNLISTEN {}", stop_channel_sql(key)));
        marked
    }

    /// The heartbeat of every name: one statement, then one row check.
    fn beat(&mut self) -> std::result::Result<(), Lost> {
        self.session.set_cutoff(None);
        let sent = Instant::now();
        let left = self.deadline().saturating_sub(self.last_proof.elapsed());
        let location = self.session.location().to_owned();
        let rows = self
            .session
            .query_typed_within(left, BEAT, &[])
            .map_err(|failure| {
                Lost(match failure {
                    Failure::Silent(_) => format!(
                        "no heartbeat answer from PostgreSQL at {location} within the heartbeat deadline: the network or the server may be down, and the server drops a silent session, and its locks, soon after"
                    ),
                    failure => format!(
                        "the shared PostgreSQL session holding the lock failed ({}); the lock must be considered gone",
                        failure.describe()
                    ),
                })
            })?;
        let Some(row) = rows.first() else {
            return Err(Lost(
                "the PostgreSQL heartbeat got an incomplete answer".to_owned(),
            ));
        };
        let pid: Option<i32> = row.try_get(0).ok().flatten();
        let standby: Option<bool> = row.try_get(1).ok().flatten();
        let keys: Option<Vec<i64>> = row.try_get(2).ok().flatten();
        let (Some(pid), Some(standby), Some(keys)) = (pid, standby, keys) else {
            return Err(Lost(
                "the PostgreSQL heartbeat got an incomplete answer".to_owned(),
            ));
        };
        self.session
            .check_same_backend(pid)
            .map_err(|err| Lost(err.to_string()))?;
        if standby {
            return Err(Lost(
                "the PostgreSQL server became a standby (a failover?); advisory locks are not replicated, so the lock is gone"
                    .to_owned(),
            ));
        }
        let held: HashSet<i64> = keys.into_iter().collect();
        let mut lost = Vec::new();
        self.names.retain(|key, entry| {
            if held.contains(key) {
                entry.loss.proven(sent);
                true
            } else {
                lost.extend(entry.loss.fire_deferred(format!(
                    "the PostgreSQL server no longer shows advisory lock {key} as held by this session"
                )));
                false
            }
        });
        run_apart(lost);
        self.last_proof = sent;
        self.check_rows()
    }

    /// Every kept name's row, in one statement (see `keep_row` in
    /// `heartbeat.rs`: the same outcomes, per name).
    fn check_rows(&mut self) -> std::result::Result<(), Lost> {
        let held: Vec<(i64, Holding)> = self
            .names
            .iter()
            .filter(|(_, entry)| entry.kept)
            .map(|(key, entry)| (*key, entry.holding.clone()))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let refs: Vec<(i64, &Holding)> = held.iter().map(|(key, h)| (*key, h)).collect();
        let interval = self.backend.config.timing.heartbeat;
        let left = self.deadline().saturating_sub(self.last_proof.elapsed());
        let display = self.backend.table.display.clone();
        let answer = self.backend.table.holder_rows_intact(
            &self.session,
            &refs,
            left,
            row_budget(interval, left),
        );
        let (rows, answered_by) = match answer {
            Ok(answer) => answer,
            Err(failure) => {
                let reason = format!(
                    "reading the rows in the state table {display} failed ({})",
                    failure.describe()
                );
                if failure.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
                    || failure.ends_session()
                {
                    return Err(Lost(reason));
                }
                if failure.cut_short() {
                    if !std::mem::replace(&mut self.rows_skipped, true) {
                        log::warn!("{reason}; the rows are checked again at the next heartbeats");
                    }
                    return Ok(());
                }
                let reason = format!(
                    "{reason}: the row may no longer make the next holder wait for this command, so the lock is kept until the command has stopped"
                );
                let mut lost = Vec::new();
                for entry in self.names.values_mut().filter(|entry| entry.kept) {
                    entry.kept = false;
                    lost.extend(entry.loss.fire_deferred(reason.clone()));
                }
                run_apart(lost);
                return Ok(());
            }
        };
        self.rows_skipped = false;
        self.session
            .check_same_backend(answered_by.unwrap_or(0))
            .map_err(|err| Lost(err.to_string()))?;
        for (key, intact, stop_requested) in rows {
            if intact {
                if stop_requested && let Some(entry) = self.names.get(&key) {
                    let from = entry
                        .requested_by
                        .clone()
                        .unwrap_or_else(|| "a requester whose announcement was missed".to_owned());
                    run_apart(entry.loss.request_stop_deferred(from).into_iter().collect());
                }
                continue;
            }
            self.restore(key)?;
        }
        Ok(())
    }

    /// Writes the row of `key` back (deleted or altered past the guard
    /// triggers).
    fn restore(&mut self, key: i64) -> std::result::Result<(), Lost> {
        let Some(entry) = self.names.get(&key) else {
            return Ok(());
        };
        let table = &self.backend.table;
        log::warn!(
            "lock '{}': its row in the state table {} was deleted or altered past the guard triggers; writing it back (token {})",
            entry.name,
            table.display,
            entry.holding.token
        );
        let interval = self.backend.config.timing.heartbeat;
        let left = self.deadline().saturating_sub(self.last_proof.elapsed());
        let restored = table.restore(
            &self.session,
            &entry.name,
            key,
            &entry.record,
            &entry.holding,
            left,
            row_budget(interval, left),
        );
        match restored {
            Ok(()) => Ok(()),
            Err(failure) if failure.ends_session() => Err(Lost(format!(
                "writing back the row in the state table {} failed ({})",
                table.display,
                failure.describe()
            ))),
            Err(failure) if failure.cut_short() => Ok(()),
            Err(failure) => {
                let reason = format!(
                    "writing back its row in the state table {} failed ({}): the row may no longer make the next holder wait for this command, so the lock is kept until the command has stopped",
                    table.display,
                    failure.describe()
                );
                if let Some(entry) = self.names.get_mut(&key) {
                    entry.kept = false;
                    run_apart(entry.loss.fire_deferred(reason).into_iter().collect());
                }
                Ok(())
            }
        }
    }

    /// A stop request announced as `TOKEN HOST:PID` on one of the
    /// channels this session listens to: the rows decide (anyone who may
    /// connect can announce).
    fn announced(&mut self, payload: &str) -> std::result::Result<(), Lost> {
        let Some((token, from)) = payload.split_once(' ') else {
            return Ok(());
        };
        let Ok(token) = token.parse::<u64>() else {
            return Ok(());
        };
        for entry in self.names.values_mut() {
            if entry.holding.token == token && entry.loss.stop_requested().is_none() {
                entry.requested_by = Some(from.to_owned());
            }
        }
        self.cut_off();
        let checked = self.check_rows();
        self.session.set_cutoff(None);
        checked
    }
}

/// Runs loss and stop-request callbacks on a thread of their own: on the
/// session's thread, one that blocks (or releases a guard, which waits for
/// that thread) would stop the heartbeat of every name on the session. A
/// thread lives only while callbacks run (a loss or a request); if none
/// can be started, they run here.
fn run_apart(callbacks: Vec<crate::backend::loss::Deferred>) {
    if callbacks.is_empty() {
        return;
    }
    let callbacks = std::sync::Arc::new(Mutex::new(Some(callbacks)));
    let apart = callbacks.clone();
    let started = thread::Builder::new()
        .name("onlyone-pg-callbacks".into())
        .spawn(move || {
            let taken = apart.lock().unwrap_or_else(|e| e.into_inner()).take();
            run_each(taken.into_iter().flatten());
        });
    if started.is_err() {
        let taken = callbacks.lock().unwrap_or_else(|e| e.into_inner()).take();
        run_each(taken.into_iter().flatten());
    }
}

/// Runs every name's callbacks, each apart from a panic in another's: the
/// names share a session, not their callbacks (one that panics, such as a
/// `send(..).unwrap()` to a receiver gone, kept every later name on the
/// session from being told of its loss).
fn run_each(callbacks: impl Iterator<Item = crate::backend::loss::Deferred>) {
    for callback in callbacks {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback)).is_err() {
            log::warn!(
                "a loss or stop-request callback panicked; the other names' callbacks still run"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 2 of adv-speed: a let-go sent while the session's thread
    /// was ending stayed in the closed channel (the pool's sender kept it,
    /// and the request its reply sender): the caller waited for the reply
    /// for ever (seen under a storm of `pg_cancel_backend`, a guard dropped
    /// after its loss during the lock-delay). Here the request is left in
    /// a channel closed by its receiver, as the thread's end leaves it.
    #[test]
    fn a_request_left_in_a_closed_channel_does_not_hang_its_caller() {
        let (requests, mut received) = unbounded_channel();
        let (reply, answer) = std_mpsc::sync_channel(1);
        requests
            .send(Request::Let {
                key: 1,
                clean: true,
                reply,
            })
            .map_err(drop)
            .unwrap();
        received.close();
        let (done, waited) = std_mpsc::channel();
        thread::spawn(move || {
            let _ = done.send(answer_of(&answer, &requests).is_none());
        });
        assert_eq!(
            waited.recv_timeout(Duration::from_secs(10)),
            Ok(true),
            "the caller waited for an answer no thread will send"
        );
        drop(received);
    }
}
