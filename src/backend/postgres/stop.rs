//! `stop` and `--replace` on PostgreSQL: end the session of the lock's
//! holder, but only of a holder identified as an onlyone holder.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use super::PostgresBackend;
use super::key_parts;
use super::server_view::ServerView;
use super::session::Session;
use crate::backend::settle::{Unidentified, once_settled};
use crate::backend::{HolderId, Stop};
use crate::error::{Error, Result};
use crate::name::LockName;

/// How long `stop` waits for the holder's row before it ends the fenced
/// transactions that keep it locked.
const FENCED_WAIT: Duration = Duration::from_millis(500);

/// How often `stop` ends fenced transactions before it gives up (new ones
/// may begin meanwhile; their fence then finds the row being marked and
/// waits).
const MAX_FENCED_ENDINGS: usize = 3;

/// How often `stop` looks again at a holder that changed between its read
/// and its mark before it gives up (77).
const MAX_RACES: usize = 3;

/// How `stop` deals with the holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Way {
    /// Asks it: marks its token in the row and announces the request on
    /// the key's channel; the holder stops its command and releases
    /// cleanly.
    Ask,
    /// Ends its session (and marks its token the same way).
    End,
}

/// The longest a `stop` that must end a shared session waits for the
/// holder asked first (its recorded T + kill grace, at most this).
const MAX_SHARED_ASK: Duration = Duration::from_secs(600);

impl PostgresBackend {
    /// Ends the holder's session ([`Way::End`]), but a session that holds
    /// other keys too (a shared session of the library: ending it would
    /// end every name on it) is asked first, as [`Way::Ask`] does, and is
    /// ended only if it still holds the key after the holder's recorded
    /// T + kill grace.
    pub(super) fn end_holder(
        &self,
        session: &mut Session,
        name: &LockName,
        expected: Option<&HolderId>,
    ) -> Result<Stop> {
        let key = self.key(name);
        let Some(bound) = self.shared_holder(session, key)? else {
            return self.stop_holder_by(session, name, expected, Way::End);
        };
        let holder = match self.stop_holder_by(session, name, expected, Way::Ask)? {
            Stop::Requested(holder, owes) => (holder, owes),
            other => return Ok(other),
        };
        let (holder, owes) = holder;
        let Some(server_pid) = holder.server_pid else {
            return self.stop_holder_by(session, name, expected, Way::End);
        };
        let until = Instant::now() + bound.min(MAX_SHARED_ASK) + owes;
        let interval = self.config.timing.heartbeat.min(Duration::from_millis(100));
        log::info!(
            "lock '{name}' is held on a shared session with other names: asked its holder first; its session is ended only if it still holds the lock after {}",
            humantime::format_duration(bound + owes)
        );
        loop {
            let view = ServerView::read(session, key)?;
            match &view.holder {
                Some(server) if server.pid == i32::try_from(server_pid).unwrap_or(-1) => {}
                // It let go (or another holder has it now): not ended.
                _ => return Ok(Stop::Signalled(holder)),
            }
            if Instant::now() >= until {
                break;
            }
            std::thread::sleep(interval);
        }
        let id = holder.id();
        self.stop_holder_by(session, name, expected.or(id.as_ref()), Way::End)
    }

    /// Whether the session holding `key` holds other advisory keys too:
    /// then the holder's recorded T + kill grace.
    fn shared_holder(&self, session: &mut Session, key: i64) -> Result<Option<Duration>> {
        let (classid, objid) = key_parts(key);
        let rows = session
            .query(
                "SELECT (SELECT count(*) FROM pg_locks o \
                         WHERE o.pid = l.pid AND o.locktype = 'advisory' AND o.granted \
                           AND o.objsubid = 1) \
                 FROM pg_locks l \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND l.classid::bigint = $1 AND l.objid::bigint = $2",
                &[&i64::from(classid), &i64::from(objid)],
            )
            .map_err(|failure| session.error("looking at the holder's session", failure))?;
        let keys: i64 = rows.first().map_or(0, |row| row.get(0));
        if keys <= 1 {
            return Ok(None);
        }
        let bound = self
            .table
            .row(session, key)?
            .and_then(|row| row.stop_within)
            .unwrap_or_else(|| self.stop_within());
        Ok(Some(bound))
    }
    /// Ends the session that holds the lock of `name`. Only a session that
    /// the state row names is ended: the row says 'held' with that
    /// session's backend pid. Anything else holding the key (another
    /// program, a psql session, an onlyone holder still starting) is
    /// refused, never ended. With `expected`, only that holder is ended:
    /// another one is [`Stop::Changed`] and left alone.
    ///
    /// With [`Way::Ask`], the session is not ended: the same statement
    /// marks the token and announces the request (`pg_notify`, delivered
    /// when it commits) on the key's channel, naming the token and this
    /// process (`TOKEN HOST:PID`). A request for a holder replaced
    /// meanwhile names a token that is no longer the row's: it changes
    /// nothing, and the new holder ignores its announcement.
    pub(super) fn stop_holder_by(
        &self,
        session: &mut Session,
        name: &LockName,
        expected: Option<&HolderId>,
        way: Way,
    ) -> Result<Stop> {
        let mut races = 0;
        while races < MAX_RACES {
            let once = once_settled(|| self.stop_holder_once(session, name, expected, way))?;
            if let Some(stop) = once {
                return Ok(stop);
            }
            races += 1;
            // The holder changed between the read and the mark (another
            // replacer took over, or the holder let go). One we were
            // told to stop is gone: what holds now is another holder,
            // left alone, as when it is seen changed before the mark.
            if expected.is_some() {
                let key = self.key(name);
                let view = ServerView::read(session, key)?;
                let Some(server) = &view.holder else {
                    return Ok(Stop::Free);
                };
                let row = self.table.row(session, key)?;
                // The holder recorded its clean release between the read
                // and the mark (the mark waited for the row it was
                // updating): not another holder, it is looked at again.
                if row.as_ref().is_some_and(|row| row.releasing_by(server.pid)) {
                    continue;
                }
                return Ok(Stop::Changed(view.holder(row.as_ref())));
            }
            // `stop` stops whoever holds: the new holder is looked at again.
        }
        Err(Error::unsafe_(format!(
            "the holder of lock '{name}' changed while it was being identified; nothing was stopped"
        )))
    }

    /// One try of [`PostgresBackend::stop_holder_by`]: `None` when the
    /// holder read changed before the statement that marks it.
    fn stop_holder_once(
        &self,
        session: &mut Session,
        name: &LockName,
        expected: Option<&HolderId>,
        way: Way,
    ) -> std::result::Result<Option<Stop>, Unidentified> {
        let key = self.key(name);
        let view = ServerView::read(session, key)?;
        let Some(server) = &view.holder else {
            return Ok(Some(Stop::Free));
        };
        let row = self.table.row(session, key)?;
        // A holder that has recorded its clean release but not unlocked yet
        // is neither another holder nor one to stop: it lets go within
        // milliseconds. (A replacer that took it for a new holder gave up
        // with 75 "taken by another starter".)
        if row.as_ref().is_some_and(|row| row.releasing_by(server.pid)) {
            return Err(Unidentified::Settling(Error::unsafe_(format!(
                "the holder of lock '{name}' recorded its release but still holds the lock ({})",
                view.holder(row.as_ref())
            ))));
        }
        let holder = view.holder(row.as_ref());
        if expected.is_some_and(|expected| holder.id().as_ref() != Some(expected)) {
            return Ok(Some(Stop::Changed(holder)));
        }
        let identified = row.as_ref().filter(|row| row.names_holder(server.pid));
        let Some(row) = identified else {
            let err = self.unidentified(name, &view, row.as_ref());
            return Err(match server.says_onlyone() {
                true => Unidentified::Settling(err),
                false => Unidentified::Other(err),
            });
        };
        // The holder is checked again in the statement that ends it: the
        // same session, still named by the row with the same token. The
        // same statement marks that token stopped, before the session is
        // ended (the termination reads the mark's row), and commits it
        // with the termination: a starter ended during its lock-delay
        // finds its own token stopped when it comes back, and gives up
        // instead of starting over as after a server restart.
        let (classid, objid) = key_parts(key);
        let sql = format!(
            "WITH marked AS ( \
               UPDATE {} r SET stopped_token = r.token \
               WHERE r.key = $1 AND r.state = 'held' AND r.token = $2 AND r.backend_pid = $5 \
                 AND EXISTS (SELECT 1 FROM pg_locks l \
                   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND l.classid::bigint = $3 AND l.objid::bigint = $4 AND l.pid = $5) \
               RETURNING r.backend_pid, r.owed_ms, r.updated_at) \
             SELECT {} FROM marked",
            self.table.sql,
            match way {
                Way::End => "pg_terminate_backend(backend_pid), 0::bigint",
                // What remains of the lock-delay of a starter still in it:
                // a row recorded after an unclean release owes something
                // (owed_ms > 0); the starter waits that or its own
                // lock-delay (taken as ours, $8), counted from its
                // acquisition (updated_at, the recording transaction's
                // start: a little early, never late by more than the
                // fence's wait).
                Way::Ask => {
                    "pg_notify($6, $7) IS NOT NULL, \
                     CASE WHEN coalesce(owed_ms, 0) > 0 \
                     THEN greatest(0, greatest(owed_ms, $8::bigint) \
                          - (extract(epoch FROM clock_timestamp() - updated_at) * 1000)::bigint) \
                     ELSE 0 END"
                }
            }
        );
        let token = i64::try_from(row.token).unwrap_or(i64::MAX);
        let channel = super::heartbeat::stop_channel(key);
        let payload = format!(
            "{} {}:{}",
            row.token,
            crate::sys::hostname(),
            std::process::id()
        );
        let (classid, objid) = (i64::from(classid), i64::from(objid));
        let lock_delay = i64::try_from(self.lock_delay().as_millis()).unwrap_or(i64::MAX);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&key, &token, &classid, &objid, &server.pid];
        if way == Way::Ask {
            params.extend([
                &channel as &(dyn tokio_postgres::types::ToSql + Sync),
                &payload,
                &lock_delay,
            ]);
        }
        // The mark updates the row, which the command's open fenced
        // transactions share-lock; they would end only once the command is
        // stopped. Those sessions are ended first, then the mark is tried
        // again.
        let mut ended = 0;
        let rows = loop {
            let marked = session
                .batch(&format!(
                    "SET lock_timeout = '{}ms'",
                    FENCED_WAIT.as_millis()
                ))
                .and_then(|()| session.query(&sql, &params));
            let _ = session.batch("SET lock_timeout = 0");
            match marked {
                Ok(rows) => break rows,
                Err(failure)
                    if failure.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                        && ended < MAX_FENCED_ENDINGS =>
                {
                    ended += 1;
                    let count = self.table.end_fenced(session, name)?;
                    log::warn!(
                        "lock '{name}': ended {count} sessions in fenced transactions that kept the holder's row locked"
                    );
                }
                Err(failure) => {
                    let doing = match way {
                        Way::Ask => "asking the holder to stop",
                        Way::End => "ending the holder's session",
                    };
                    return Err(session.error(doing, failure).into());
                }
            }
        };
        let owes = |row: &tokio_postgres::Row| {
            Duration::from_millis(
                row.try_get::<_, i64>(1)
                    .ok()
                    .and_then(|ms| u64::try_from(ms).ok())
                    .unwrap_or(0),
            )
        };
        match rows.first().map(|row| (row.get::<_, bool>(0), owes(row))) {
            Some((true, owes)) if way == Way::Ask => Ok(Some(Stop::Requested(holder, owes))),
            Some((true, _)) => Ok(Some(Stop::Signalled(holder))),
            Some((false, _)) => Err(Error::unavailable(format!(
                "the PostgreSQL server did not end the session of the holder of lock '{name}' (backend pid {})",
                server.pid
            ))
            .into()),
            None => Ok(None),
        }
    }

    fn unidentified(
        &self,
        name: &LockName,
        view: &ServerView,
        row: Option<&super::state::Row>,
    ) -> Error {
        Error::unsafe_(format!(
            "cannot identify the holder of lock '{name}' safely ({}); stop it by hand",
            view.holder(row)
        ))
    }
}
