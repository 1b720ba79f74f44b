//! The rows of the state table: fencing tokens, clean or unclean release,
//! the bound a successor owes, and the holder's record. One row per
//! advisory key, whatever lock name took it, and one state table per key in
//! a database.

use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::Row as PgRow;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::failure::Failure;
use super::session::Session;
use super::table::{MARKER, Table};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::{RECORD_FORMAT, Record};

/// Per key: whether its row is intact and whether `stop` asked its
/// holder to stop; and the server process that answered.
pub(super) type RowsIntact = (Vec<(i64, bool, bool)>, Option<i32>);

/// The columns read back for a row, in [`Row::from_pg`]'s order.
const COLUMNS: &str = "name, key, token, state, backend_pid, pid, host, start_time, boot_id, \
                       user_name, uid, command, acquired_at, stopped_token, stop_within_ms";

impl Table {
    /// Refuses to take a key that another state table of the database
    /// records too: holders of one key that keep two rows would not see
    /// each other's unclean release, and their tokens would not grow.
    /// Called while holding the advisory lock, so no holder of the key can
    /// add such a row meanwhile. A state table this role cannot read might
    /// hold one: refused too.
    pub fn refuse_other_tables(&self, session: &mut Session, key: i64) -> Result<()> {
        let others = session
            .query(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_description d ON d.objoid = c.oid \
                   AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0 \
                 WHERE d.description = $1 AND c.relkind IN ('r', 'p') \
                   AND c.oid IS DISTINCT FROM to_regclass($2)::oid",
                &[&MARKER, &self.sql],
            )
            .map_err(|failure| session.error("looking for other state tables", failure))?;
        for other in others {
            let other: String = other.get(0);
            // `other` comes quoted from the catalog.
            let sql = format!("SELECT name, token, state FROM {other} WHERE key = $1");
            match session.query(&sql, &[&key]) {
                Ok(rows) => match rows.first() {
                    None => {}
                    Some(row) => {
                        let (name, token, state): (String, i64, String) =
                            (row.get(0), row.get(1), row.get(2));
                        return Err(Error::unsafe_(format!(
                            "lock key {key} is also recorded in table {other} (as lock '{name}', token {token}, {state}), not only in {}; every holder of one key must use one state table (if {other} is no longer used, drop it: its rows cannot be deleted one by one)",
                            self.display
                        )));
                    }
                },
                // Dropped since we looked.
                Err(failure) if failure.code() == Some(&SqlState::UNDEFINED_TABLE) => {}
                Err(failure) if failure.ends_session() => {
                    return Err(session.error("reading another state table", failure));
                }
                Err(failure) => {
                    let error = Error::unsafe_(format!(
                        "cannot read the state table {other} ({}), which may record lock key {key} too; every holder of one key must use one state table: grant SELECT on {other} to this role, or remove its marker (COMMENT ON TABLE {other} IS NULL) if it is not an onlyone state table",
                        failure.describe()
                    ));
                    return Err(failure.attach_to(error));
                }
            }
        }
        Ok(())
    }

    /// Records a new holder while the advisory lock is held: the next
    /// token, committed before the lock is handed out, and whether the
    /// previous holder left without a clean release. `stop_within` is how
    /// long this holder may take to stop its command once it has lost the
    /// lock (its heartbeat deadline + kill grace), recorded for the next.
    ///
    /// Until a holder releases cleanly, a successor owes the largest bound
    /// of every unclean holder since the last clean release, each plus
    /// `margin`: the row carries it forward (`owed_ms`), so that a holder
    /// lost during its own lock-delay does not shorten the wait for an
    /// earlier holder's command.
    ///
    /// `lost`: the token of this starter's own acquisition of `key` that
    /// ended before its command started. If `stop` marked that token
    /// stopped, nothing is recorded and `None` is returned: the starter was
    /// stopped, not cut off. (The row is read as committed: a `stop` still
    /// committing its mark is waited for.)
    #[allow(clippy::too_many_arguments)]
    pub fn record_acquisition(
        &self,
        session: &mut Session,
        name: &LockName,
        key: i64,
        record: &Record,
        stop_within: Duration,
        margin: Duration,
        lost: Option<u64>,
    ) -> Result<Option<Acquisition>> {
        // The CTE reads the row as it was before this statement; so do the
        // `t.` columns on the right of the SET. The sum saturates: a bound
        // recorded by a holder that nothing capped (any bigint) must make
        // its successors wait, not fail with "bigint out of range".
        let sql = format!(
            "WITH previous AS (SELECT state FROM {t} WHERE key = $2) \
             INSERT INTO {t} AS t (key, name, token, state, backend_pid, pid, host, start_time, \
                                   boot_id, user_name, uid, command, acquired_at, stop_within_ms, \
                                   owed_ms, updated_at) \
             VALUES ($2, $1, 1, 'held', pg_backend_pid(), $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                     0, now()) \
             ON CONFLICT (key) DO UPDATE SET \
               name = EXCLUDED.name, token = t.token + 1, state = 'held', \
               backend_pid = EXCLUDED.backend_pid, pid = EXCLUDED.pid, host = EXCLUDED.host, \
               start_time = EXCLUDED.start_time, boot_id = EXCLUDED.boot_id, \
               user_name = EXCLUDED.user_name, uid = EXCLUDED.uid, command = EXCLUDED.command, \
               acquired_at = EXCLUDED.acquired_at, stop_within_ms = EXCLUDED.stop_within_ms, \
               owed_ms = CASE WHEN t.state = 'held' \
                         THEN greatest(coalesce(t.owed_ms, 0), \
                                       least(coalesce(t.stop_within_ms, 0), 9223372036854775807 - $12) + $12) \
                         ELSE 0 END, \
               updated_at = now() \
             WHERE $13::bigint IS NULL OR t.stopped_token IS DISTINCT FROM $13 \
             RETURNING t.token, (SELECT state FROM previous), t.backend_pid, t.owed_ms",
            t = self.sql
        );
        let columns = RecordColumns::of(name, key, record);
        let lost = lost.map(|token| i64::try_from(token).unwrap_or(i64::MAX));
        let (stop_within, margin) = (millis(stop_within), millis(margin));
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = columns.typed_params().to_vec();
        params.extend([
            (&stop_within as &(dyn ToSql + Sync), Type::INT8),
            (&margin, Type::INT8),
            (&lost, Type::INT8),
        ]);
        let result = session.query_typed(&sql, &params);
        let rows = match result {
            Ok(rows) => rows,
            Err(failure) if failure.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(self.no_privilege(session, failure));
            }
            Err(failure) => return Err(session.error("recording the fencing token", failure)),
        };
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        session.check_same_backend(row.get(2))?;
        let token: i64 = row.get(0);
        let previous: Option<String> = row.get(1);
        let owed: Option<i64> = row.get(3);
        Ok(Some(Acquisition {
            token: u64::try_from(token).unwrap_or(0),
            previous_was_held: previous.as_deref() == Some("held"),
            owed: Duration::from_millis(owed.and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0)),
        }))
    }

    /// Whether `stop` marked the acquisition `token` of `key` stopped. Read
    /// `FOR SHARE`: a `stop` that ended the session and has yet to commit
    /// its mark is waited for.
    pub fn was_stopped(&self, session: &mut Session, key: i64, token: u64) -> Result<bool> {
        let sql = format!(
            "SELECT stopped_token = $2 FROM {} WHERE key = $1 FOR SHARE",
            self.sql
        );
        let token = i64::try_from(token).unwrap_or(i64::MAX);
        let rows = session
            .query(&sql, &[&key, &token])
            .map_err(|failure| session.error("reading the state row", failure))?;
        Ok(rows
            .first()
            .and_then(|row| row.get::<_, Option<bool>>(0))
            .unwrap_or(false))
    }

    /// Whether the row of `key` still says what its holder wrote: held by
    /// this session, with its token and its bounds (a `stop`'s mark aside),
    /// whether `stop` asked this holder to stop (its mark names the token),
    /// and the server process that answered (a pooler may hand the
    /// connection to another one). Answered within `deadline`; a wait for
    /// the table (a migration queued behind a reader) is cut off after
    /// `budget`.
    pub fn holder_row_intact(
        &self,
        session: &Session,
        key: i64,
        holding: &Holding,
        deadline: Duration,
        budget: Duration,
    ) -> std::result::Result<(bool, bool, Option<i32>), Failure> {
        // One round trip: the values are numbers, written in.
        let sql = format!(
            "SELECT coalesce((SELECT token = {token} AND state = 'held' \
                                     AND backend_pid = pg_backend_pid() \
                                     AND stop_within_ms IS NOT DISTINCT FROM {stop_within} \
                                     AND owed_ms >= {owed} \
                              FROM {table} WHERE key = {key}), false), \
                    pg_backend_pid(), \
                    coalesce((SELECT stopped_token = {token} \
                              FROM {table} WHERE key = {key}), false)",
            token = i64::try_from(holding.token).unwrap_or(i64::MAX),
            stop_within = millis(holding.stop_within),
            owed = millis(holding.owed),
            table = self.sql,
        );
        let row = session
            .query_briefly(deadline, budget, &sql)?
            .unwrap_or_default();
        let column = |i: usize| row.get(i).cloned().flatten();
        Ok((
            column(0).as_deref() == Some("t"),
            column(2).as_deref() == Some("t"),
            column(1).and_then(|pid| pid.parse().ok()),
        ))
    }

    /// [`Table::holder_row_intact`] for every name a shared session
    /// holds, in one statement: per key of `held` (with what its holder
    /// wrote), whether its row is intact and whether `stop` asked its
    /// holder to stop; and the server process that answered.
    pub fn holder_rows_intact(
        &self,
        session: &Session,
        held: &[(i64, &Holding)],
        deadline: Duration,
        budget: Duration,
    ) -> std::result::Result<RowsIntact, Failure> {
        let sql = format!(
            "SELECT e.key, \
                    coalesce(r.token = e.token AND r.state = 'held' \
                             AND r.backend_pid = pg_backend_pid() \
                             AND r.stop_within_ms IS NOT DISTINCT FROM e.stop_within \
                             AND r.owed_ms >= e.owed, false), \
                    coalesce(r.stopped_token = e.token, false), \
                    pg_backend_pid() \
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                  AS e(key, token, stop_within, owed) \
             LEFT JOIN {} r ON r.key = e.key",
            self.sql
        );
        let keys: Vec<i64> = held.iter().map(|(key, _)| *key).collect();
        let tokens: Vec<i64> = held
            .iter()
            .map(|(_, h)| i64::try_from(h.token).unwrap_or(i64::MAX))
            .collect();
        let bounds: Vec<i64> = held.iter().map(|(_, h)| millis(h.stop_within)).collect();
        let owed: Vec<i64> = held.iter().map(|(_, h)| millis(h.owed)).collect();
        let rows =
            session.query_bounded(deadline, budget, &sql, &[&keys, &tokens, &bounds, &owed])?;
        let answered_by = rows.first().and_then(|row| row.try_get(3).ok());
        Ok((
            rows.iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect(),
            answered_by,
        ))
    }

    /// Writes the row of `key` back as its holder wrote it when it
    /// acquired: for a row deleted or altered past the guard triggers
    /// (DESIGN.md). The trigger still refuses a token moved back. Answered
    /// within `deadline`; a wait for the table is cut off after `budget`.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &self,
        session: &Session,
        name: &LockName,
        key: i64,
        record: &Record,
        holding: &Holding,
        deadline: Duration,
        budget: Duration,
    ) -> std::result::Result<(), Failure> {
        let sql = format!(
            "INSERT INTO {t} AS t (key, name, token, state, backend_pid, pid, host, start_time, \
                                   boot_id, user_name, uid, command, acquired_at, stop_within_ms, \
                                   owed_ms, updated_at) \
             VALUES ($2, $1, $13, 'held', pg_backend_pid(), $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                     $12, now()) \
             ON CONFLICT (key) DO UPDATE SET \
               name = EXCLUDED.name, token = EXCLUDED.token, state = 'held', \
               backend_pid = EXCLUDED.backend_pid, pid = EXCLUDED.pid, host = EXCLUDED.host, \
               start_time = EXCLUDED.start_time, boot_id = EXCLUDED.boot_id, \
               user_name = EXCLUDED.user_name, uid = EXCLUDED.uid, command = EXCLUDED.command, \
               acquired_at = EXCLUDED.acquired_at, stop_within_ms = EXCLUDED.stop_within_ms, \
               owed_ms = greatest(EXCLUDED.owed_ms, t.owed_ms), updated_at = now()",
            t = self.sql
        );
        let columns = RecordColumns::of(name, key, record);
        let stop_within = millis(holding.stop_within);
        let owed = millis(holding.owed);
        let token = i64::try_from(holding.token).unwrap_or(i64::MAX);
        let mut params = columns.params().to_vec();
        params.extend([&stop_within as &(dyn ToSql + Sync), &owed, &token]);
        session
            .query_bounded(deadline, budget, &sql, &params)
            .map(drop)
    }

    /// Marks a clean release, so that the next holder needs no lock-delay.
    /// Only this holder's row is touched.
    pub fn mark_released(
        &self,
        session: &mut Session,
        key: i64,
        token: u64,
        deadline: Instant,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET state = 'released', updated_at = now() WHERE key = $1 AND token = $2",
            self.sql
        );
        let token = i64::try_from(token).unwrap_or(i64::MAX);
        let left = deadline.saturating_duration_since(Instant::now());
        session
            .query_typed_within(left, &sql, &[(&key, Type::INT8), (&token, Type::INT8)])
            .map(drop)
            .map_err(|failure| session.error("recording the release", failure))
    }

    /// The row of advisory key `key`, if the table and the row exist.
    pub fn row(&self, session: &mut Session, key: i64) -> Result<Option<Row>> {
        let sql = format!("SELECT {COLUMNS} FROM {} WHERE key = $1", self.sql);
        Ok(self.select(session, &sql, &[&key])?.into_iter().next())
    }

    /// The rows whose names start with `prefix`, by name: the slots of
    /// a pool (`NAME@`), without reading the rest of the table.
    pub fn rows_starting_with(&self, session: &mut Session, prefix: &str) -> Result<Vec<Row>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE left(name, length($1)) = $1 ORDER BY name",
            self.sql
        );
        self.select(session, &sql, &[&prefix])
    }

    /// Every row, by name.
    pub fn rows(&self, session: &mut Session) -> Result<Vec<Row>> {
        let sql = format!("SELECT {COLUMNS} FROM {} ORDER BY name", self.sql);
        self.select(session, &sql, &[])
    }

    fn select(
        &self,
        session: &mut Session,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        if !self.exists(session)? {
            return Ok(Vec::new());
        }
        match session.query(sql, params) {
            Ok(rows) => Ok(rows.iter().map(Row::from_pg).collect()),
            // Dropped since we looked.
            Err(failure) if failure.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(Vec::new()),
            Err(failure) if failure.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                Err(self.no_privilege(session, failure))
            }
            Err(failure) => Err(session.error("reading the state table", failure)),
        }
    }
}

/// What a holder wrote in its row when it acquired, and keeps there.
#[derive(Clone, Debug)]
pub(super) struct Holding {
    pub token: u64,
    /// Its heartbeat deadline + kill grace.
    pub stop_within: Duration,
    /// What its successor owes for the holders before it.
    pub owed: Duration,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// What recording an acquisition found.
#[derive(Debug)]
pub(super) struct Acquisition {
    /// The fencing token of this acquisition.
    pub token: u64,
    /// The previous holder did not release cleanly.
    pub previous_was_held: bool,
    /// The longest bound, plus the margin, of every holder since the last
    /// clean release: how long their commands may still run after they
    /// lost the lock. Zero after a clean release.
    pub owed: Duration,
}

/// One lock's row of the state table.
#[derive(Debug)]
pub(super) struct Row {
    /// The name that took the key last.
    pub name: String,
    pub key: i64,
    pub token: u64,
    /// `held` until a clean release.
    pub state: String,
    /// The server process of the holder's session.
    pub backend_pid: Option<i32>,
    /// The holder's record, when every part of it is there.
    pub record: Option<Record>,
    /// The last token `stop` asked to stop, or ended.
    pub stopped_token: Option<u64>,
    /// The holder's heartbeat deadline + kill grace, as it recorded it.
    pub stop_within: Option<Duration>,
}

impl Row {
    fn from_pg(row: &PgRow) -> Row {
        let token = row
            .try_get::<_, i64>(2)
            .ok()
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(0);
        Row {
            name: row.try_get(0).unwrap_or_default(),
            key: row.try_get(1).unwrap_or_default(),
            token,
            state: row.try_get(3).unwrap_or_default(),
            backend_pid: row.try_get(4).ok().flatten(),
            record: record_from(row, token),
            stopped_token: row
                .try_get::<_, Option<i64>>(13)
                .ok()
                .flatten()
                .and_then(|t| u64::try_from(t).ok()),
            stop_within: row
                .try_get::<_, Option<i64>>(14)
                .ok()
                .flatten()
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis),
        }
    }

    /// A stop request for the holder this row names, not answered yet.
    pub fn stop_pending(&self) -> Option<u64> {
        (self.state == "held" && self.stopped_token == Some(self.token)).then_some(self.token)
    }

    /// The row names this session as the holder that recorded it.
    pub fn names_holder(&self, backend_pid: i32) -> bool {
        self.state == "held" && self.backend_pid == Some(backend_pid)
    }

    /// Whether the session `backend_pid`, which still holds the key, is
    /// the holder between recording its clean release and unlocking: the
    /// row says released by that very session.
    pub fn releasing_by(&self, backend_pid: i32) -> bool {
        self.state == "released" && self.backend_pid == Some(backend_pid)
    }
}

fn record_from(row: &PgRow, token: u64) -> Option<Record> {
    let pid: i32 = row.try_get::<_, Option<i32>>(5).ok()??;
    let uid: i64 = row.try_get::<_, Option<i64>>(10).ok()??;
    let acquired_at: SystemTime = row.try_get::<_, Option<SystemTime>>(12).ok()??;
    Some(Record {
        format: RECORD_FORMAT.to_owned(),
        token,
        pid: u32::try_from(pid).ok()?,
        start_time: row
            .try_get::<_, Option<i64>>(7)
            .ok()?
            .and_then(|t| u64::try_from(t).ok()),
        boot_id: row.try_get(8).ok()?,
        host: row.try_get::<_, Option<String>>(6).ok()??,
        user: row.try_get::<_, Option<String>>(9).ok()??,
        uid: u32::try_from(uid).ok()?,
        command: row
            .try_get::<_, Option<Vec<String>>>(11)
            .ok()?
            .unwrap_or_default(),
        acquired_at: humantime::format_rfc3339_millis(acquired_at).to_string(),
    })
}

/// The lock's name and key and the holder's record as the state row's
/// columns `$1` to `$10`, in the order both the acquiring statement and
/// the holder's write-back use: one list, so that the two cannot drift.
struct RecordColumns<'a> {
    name: &'a str,
    key: i64,
    pid: Option<i32>,
    record: &'a Record,
    start_time: Option<i64>,
    uid: i64,
    acquired_at: SystemTime,
}

impl<'a> RecordColumns<'a> {
    fn of(name: &'a LockName, key: i64, record: &'a Record) -> RecordColumns<'a> {
        RecordColumns {
            name: name.as_str(),
            key,
            pid: i32::try_from(record.pid).ok(),
            record,
            start_time: record.start_time.and_then(|t| i64::try_from(t).ok()),
            uid: i64::from(record.uid),
            acquired_at: record.acquired_time().unwrap_or_else(SystemTime::now),
        }
    }

    /// [`RecordColumns::params`] with their types, for a statement sent in
    /// one round trip.
    fn typed_params(&self) -> [(&(dyn ToSql + Sync), Type); 10] {
        let [
            name,
            key,
            pid,
            host,
            start_time,
            boot_id,
            user,
            uid,
            command,
            acquired_at,
        ] = self.params();
        [
            (name, Type::TEXT),
            (key, Type::INT8),
            (pid, Type::INT4),
            (host, Type::TEXT),
            (start_time, Type::INT8),
            (boot_id, Type::TEXT),
            (user, Type::TEXT),
            (uid, Type::INT8),
            (command, Type::TEXT_ARRAY),
            (acquired_at, Type::TIMESTAMPTZ),
        ]
    }

    /// name, key, pid, host, start_time, boot_id, user_name, uid, command,
    /// acquired_at.
    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.name,
            &self.key,
            &self.pid,
            &self.record.host,
            &self.start_time,
            &self.record.boot_id,
            &self.record.user,
            &self.uid,
            &self.record.command,
            &self.acquired_at,
        ]
    }
}
