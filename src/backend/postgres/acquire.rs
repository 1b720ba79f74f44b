//! Taking a lock: a dedicated session takes the advisory lock, records the
//! acquisition in the state row, starts its heartbeat and waits out the
//! lock-delay the row asks for, within the caller's timeout.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use super::cancel;
use super::heartbeat::{IDLE_MARGIN, Keep, PostgresHeld};
use super::server_view::ServerView;
use super::session::Session;
use super::state::{Acquisition, Holding};
use super::{LOCK_DELAY_MARGIN, PostgresBackend, RECONNECT_PAUSE, application_name};
use crate::backend::{Attempt, Guard, Held, Holder, Wait};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;

impl PostgresBackend {
    /// Runs `once` again while it fails in a way that shows that its
    /// session held nothing that ran. A session that ended before it held
    /// the lock: a waiter waits on with a new session until its deadline,
    /// a single try gives up. A session that ended after it took the lock
    /// (while recording it, or during the lock-delay), before the command
    /// started: every starter starts over, since it had found the lock
    /// free, unless `stop` ended that session: `once` is given the key and
    /// token of the acquisition lost, and gives up if `stop` marked it.
    pub(super) fn retrying(
        &self,
        wait: Wait,
        once: impl Fn(Option<(i64, u64)>) -> Result<Attempt>,
    ) -> Result<Attempt> {
        let mut lost = None;
        loop {
            cancel::check()?;
            let err = match once(lost) {
                Err(err) if err.ended_session() => err,
                done => return done,
            };
            // A cancelled lock-delay ends as a lost lock: not to be tried
            // again.
            cancel::check()?;
            // A loss during the lock-delay cannot come after the deadline
            // (the delay ends there): try again, which at the deadline is
            // one last try.
            if err.is_lost() {
                lost = err.start_lost().or(lost);
                let again = match wait {
                    Wait::No => "trying again",
                    Wait::Until(_) => "waiting on",
                };
                log::warn!("{err}; the command never ran: {again} with a new session");
                continue;
            }
            let Wait::Until(deadline) = wait else {
                return Err(err);
            };
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(err);
            }
            log::warn!("{err}; the lock was not held yet: waiting on with a new session");
            std::thread::sleep(left.unwrap_or(RECONNECT_PAUSE).min(RECONNECT_PAUSE));
        }
    }

    /// How long a lock session may sit idle before the server ends it: a
    /// live process never leaves it idle that long (a holder's heartbeat
    /// runs every interval), a stopped one does.
    pub(super) fn idle_limit(&self) -> Duration {
        self.heartbeat_deadline().saturating_add(IDLE_MARGIN)
    }

    /// A session for `label`'s locks, with the state table ready (a
    /// migration waits for the table until `deadline` at most).
    pub(super) fn open(&self, label: &str, deadline: Option<Instant>) -> Result<Session> {
        let mut session = Session::open(&self.target, &application_name(label))?;
        self.table.ensure(&mut session, deadline)?;
        Ok(session)
    }

    /// One attempt at `name`: waits for the lock as `wait` says, and for
    /// a lock-delay until `delay_until` at most. `lost`: an earlier
    /// acquisition of this starter that ended before its command started.
    pub(super) fn attempt_once(
        &self,
        name: &LockName,
        command: &[String],
        wait: Wait,
        delay_until: Option<Instant>,
        lost: Option<(i64, u64)>,
    ) -> Result<Attempt> {
        if let Some(pool) = &self.shared
            && let Some(attempt) =
                self.attempt_shared(pool, name, command, wait, delay_until, lost)?
        {
            return Ok(attempt);
        }
        let key = self.key(name);
        let mut session = self.open(name.as_str(), delay_until)?;
        self.refuse_stopped_start(&mut session, std::slice::from_ref(name), lost)?;
        // Granted while this process is stopped (Ctrl-Z, SIGSTOP), the lock
        // would be held by a silent session for as long as it stays
        // stopped: the server ends it as it would a stopped holder's.
        session.expire_when_idle(self.idle_limit())?;
        let in_server = match wait {
            Wait::Until(_) => Some(cancel::wait_in_server(session.canceller())?),
            Wait::No => None,
        };
        let locked = session.lock(key, wait);
        drop(in_server);
        if !locked? {
            let holder = self.holder(&mut session, key);
            session.close();
            return Ok(Attempt::Held(holder?));
        }
        self.hold(session, name, command, delay_until, lost)
    }

    /// Gives up when `stop` ended this starter's earlier acquisition
    /// `lost` (of one of `names`) before its command started: the starter
    /// was stopped, and must not start a lock-delay later anyway.
    pub(super) fn refuse_stopped_start(
        &self,
        session: &mut Session,
        names: &[LockName],
        lost: Option<(i64, u64)>,
    ) -> Result<()> {
        let Some((key, token)) = lost else {
            return Ok(());
        };
        let Some(name) = names.iter().find(|name| self.key(name) == key) else {
            return Ok(());
        };
        if self.table.was_stopped(session, key, token)? {
            return Err(stopped_before_start(name, token));
        }
        Ok(())
    }

    /// Turns `session`, which holds the lock of `name`, into a guard: the
    /// acquisition is recorded (the fencing token), the heartbeat starts,
    /// and the lock-delay is waited out if the previous holder did not
    /// release cleanly, but not past `delay_until`.
    pub(super) fn hold(
        &self,
        mut session: Session,
        name: &LockName,
        command: &[String],
        delay_until: Option<Instant>,
        lost: Option<(i64, u64)>,
    ) -> Result<Attempt> {
        let key = self.key(name);
        self.table
            .refuse_other_tables(&mut session, key)
            .map_err(lost_before_start)?;
        let mut record = Record::for_current_process(command, 0);
        let lost_here = lost.filter(|(lost_key, _)| *lost_key == key);
        let recorded = self
            .record_fenced(
                &mut session,
                name,
                &record,
                lost_here.map(|(_, token)| token),
            )
            .map_err(lost_before_start)?;
        let acquisition = match (recorded, lost_here) {
            (Some(acquisition), _) => acquisition,
            // `stop` marked the lost acquisition after the look before
            // the lock; nothing was recorded.
            (None, lost) => {
                session.close();
                let token = lost.map_or(0, |(_, token)| token);
                return Err(stopped_before_start(name, token));
            }
        };
        record.token = acquisition.token;
        let token = acquisition.token;
        // A session ended here (by `stop`, among others) ended after the
        // token was committed: as during the lock-delay, the starter
        // learns whether `stop` marked it before it starts over.
        if let Some((other, held)) = self
            .pool_and_plain_mix(&mut session, name)
            .map_err(|err| lost_before_start(err).losing_start(key, token))?
        {
            // Let go at once. Nothing ran, so the release is clean, unless
            // a previous holder's command may still run: its lock-delay has
            // not been waited, and the row must keep saying 'held' so
            // that the next holder waits it.
            let deadline = Instant::now() + self.heartbeat_deadline();
            let released = if acquisition.previous_was_held {
                Ok(())
            } else {
                self.table
                    .mark_released(&mut session, key, token, deadline)
                    .and_then(|()| session.unlock(key, deadline))
            };
            session.close();
            if let Err(err) = released {
                log::warn!("lock '{name}': letting go after finding the other kind held: {err}");
            }
            let base = LockName::new(name.base())?;
            return Err(if held {
                crate::backend::pool_and_plain_mix(&base, &other)
            } else {
                crate::backend::pool_and_plain_mix_unreleased(&base, &other)
            });
        }
        let keep = Keep {
            name: name.clone(),
            key,
            holding: Holding {
                token,
                stop_within: self.stop_within(),
                owed: acquisition.owed,
            },
            table: self.table.clone(),
            interval: self.config.timing.heartbeat,
            deadline: self.heartbeat_deadline(),
            fence: Some(match self.config.key {
                None => self.table.fence_sql(name, token),
                Some(_) => super::table::Table::unfenceable_sql(name),
            }),
        };
        let held = PostgresHeld::start(session, keep, record)
            .map_err(|err| lost_before_start(err).losing_start(key, token))?;
        if !acquisition.previous_was_held {
            return Ok(Attempt::Acquired(Guard::new(Box::new(held))));
        }
        // Every holder since the last clean release may still be stopping
        // its command: wait the longest of their bounds (carried in the
        // row), counted from our own acquisition, or our own lock-delay.
        let delay = acquisition.owed.max(self.lock_delay());
        log::warn!(
            "lock '{name}': the previous holder did not release it cleanly (it crashed, was killed, or lost its database session); waiting the lock-delay of {} so that its command has time to stop",
            humantime::format_duration(delay)
        );
        let _cancellable = cancel::lock_delay(Held::loss(&held).clone());
        let waited = held
            .wait_lock_delay(delay, delay_until)
            .map_err(|err| err.losing_start(key, token))?;
        Ok(match waited {
            Some(held) => Attempt::Acquired(Guard::new(Box::new(held))),
            None => Attempt::Held(Holder {
                lock_delay: Some(delay),
                ..Holder::default()
            }),
        })
    }

    /// Records the acquisition (the next token) in one transaction with
    /// the wait for the previous holder's fenced transactions: the token is
    /// committed only once they have ended (see `fence.rs`).
    fn record_fenced(
        &self,
        session: &mut Session,
        name: &LockName,
        record: &Record,
        lost: Option<u64>,
    ) -> Result<Option<Acquisition>> {
        let recorded = self
            .table
            .begin_excluding_fenced(session, name)
            .and_then(|()| {
                self.table.record_acquisition(
                    session,
                    name,
                    self.key(name),
                    record,
                    self.stop_within(),
                    LOCK_DELAY_MARGIN,
                    lost,
                )
            });
        let end = match recorded {
            Ok(Some(_)) => "COMMIT",
            _ => "ROLLBACK",
        };
        match session.batch(end) {
            Ok(()) => recorded,
            Err(failure) => {
                recorded.and(Err(session.error("recording the fencing token", failure)))
            }
        }
    }

    /// A name is a pool of slots or a plain lock, not both (see
    /// [`crate::Lock`]): on the session that has just taken `name`, the
    /// other kind in use now, if any, and whether it is held (else it was
    /// not released cleanly: its state row says `held`, its holder lost
    /// it, its command may still run and the lock-delay it owes has not
    /// been waited). For a plain lock, its slots (`NAME@N`, found in the
    /// state table); for a slot, the plain lock of its pool's name. One
    /// statement, on the session that holds the lock, before the lock is
    /// handed out: of two that race, the one that looks last finds the
    /// other's lock held.
    pub(super) fn pool_and_plain_mix(
        &self,
        session: &mut Session,
        name: &LockName,
    ) -> Result<Option<(String, bool)>> {
        let check = self.pool_and_plain_check(name)?;
        let rows = session
            .query_typed(&check.sql, &check.params())
            .map_err(|failure| session.error(check.doing(), failure))?;
        Ok(check.read(&rows))
    }

    /// The statement of [`PostgresBackend::pool_and_plain_mix`], to be
    /// sent by the caller (a shared session sends it with the commit).
    pub(super) fn pool_and_plain_check(&self, name: &LockName) -> Result<MixCheck> {
        const HELD: &str = "EXISTS (SELECT 1 FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid::bigint = (k >> 32) & 4294967295 AND l.objid::bigint = k & 4294967295)";
        if name.slot_number().is_some() {
            let base = LockName::new(name.base())?;
            let key = self.key(&base);
            let sql = format!(
                "SELECT {HELD}, EXISTS (SELECT 1 FROM {} WHERE key = k AND state = 'held') \
                 FROM (SELECT $1::bigint AS k) s",
                self.table.sql
            );
            return Ok(MixCheck {
                sql,
                name: name.clone(),
                of: MixOf::Slot { base, key },
            });
        }
        // Every row whose name starts with `NAME@`; which of them are slots
        // of `name` is decided as for any stored name. Held ones first.
        let prefix = format!("{}@", name.as_str());
        let sql = format!(
            "SELECT name, held FROM (SELECT name, {HELD} AS held, state \
               FROM (SELECT name, key AS k, state FROM {} WHERE left(name, $2) = $1) r) s \
             WHERE held OR state = 'held' ORDER BY held DESC, name",
            self.table.sql
        );
        let length = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
        Ok(MixCheck {
            sql,
            name: name.clone(),
            of: MixOf::Plain { prefix, length },
        })
    }

    /// Who holds the lock `key`, as seen right after failing to take it.
    pub(super) fn holder(&self, session: &mut Session, key: i64) -> Result<Holder> {
        let row = self.table.row(session, key)?;
        let view = ServerView::read(session, key)?;
        Ok(view.holder(row.as_ref()))
    }
}

/// `stop` ended the session of this starter's acquisition `token` of
/// `name` during its lock-delay, before its command started.
pub(super) fn stopped_before_start(name: &LockName, token: u64) -> Error {
    Error::lost(format!(
        "lock '{name}' was stopped by `onlyone stop` or a replacing start before its command started (its acquisition with token {token} was ended during its lock-delay); the command was not run"
    ))
}

/// A session that ended after it took the lock, before the command could
/// start, lost a lock that protected nothing yet: as after a loss during the
/// lock-delay, the starter may start over.
pub(super) fn lost_before_start(err: Error) -> Error {
    if err.ended_session() && !err.is_lost() {
        Error::lost(format!("lost the lock before its command started: {err}")).ending_session(true)
    } else {
        err
    }
}

/// The pool/plain check of one name (see
/// [`PostgresBackend::pool_and_plain_mix`]): its statement, its
/// parameters, and what its rows say.
pub(super) struct MixCheck {
    pub(super) sql: String,
    name: LockName,
    of: MixOf,
}

enum MixOf {
    /// A slot: the plain lock of its pool's name.
    Slot { base: LockName, key: i64 },
    /// A plain lock: the rows named `prefix`…
    Plain { prefix: String, length: i32 },
}

impl MixCheck {
    pub(super) fn params(&self) -> Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> {
        match &self.of {
            MixOf::Slot { key, .. } => vec![(key, Type::INT8)],
            MixOf::Plain { prefix, length } => {
                vec![(prefix, Type::TEXT), (length, Type::INT4)]
            }
        }
    }

    /// What the statement is doing, for its error.
    pub(super) fn doing(&self) -> &'static str {
        match self.of {
            MixOf::Slot { .. } => "looking for the plain lock of the pool",
            MixOf::Plain { .. } => "looking for slots of the lock",
        }
    }

    /// The other kind in use, and whether it is held.
    pub(super) fn read(&self, rows: &[tokio_postgres::Row]) -> Option<(String, bool)> {
        match &self.of {
            MixOf::Slot { base, .. } => {
                let (held, unreleased) = rows.first().map_or((false, false), |row| {
                    (row.get::<_, bool>(0), row.get::<_, bool>(1))
                });
                (held || unreleased).then(|| (base.to_string(), held))
            }
            MixOf::Plain { .. } => rows
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, bool>(1)))
                .find(|(stored, _)| {
                    LockName::from_stored(stored).is_some_and(|slot| slot.is_slot_of(&self.name))
                }),
        }
    }
}
