//! The state table (fencing tokens, clean/unclean release, holder records)
//! and the server's own view of a lock (`pg_locks`, `pg_stat_activity`).

use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::Row as PgRow;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::key_parts;
use super::session::{Failure, Session};
use crate::backend::Holder;
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::{RECORD_FORMAT, Record};

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENTIFIER_LEN: usize = 63;

/// How often creating the table is retried when another session creates it
/// at the same moment.
const CREATE_ATTEMPTS: usize = 5;

/// The columns read back for a row, in [`Row::from_pg`]'s order.
const COLUMNS: &str = "name, key, token, state, backend_pid, pid, host, start_time, boot_id, \
                       user_name, uid, command, acquired_at";

/// The state table, by its validated (and always quoted) name.
#[derive(Clone, Debug)]
pub(super) struct Table {
    sql: String,
}

impl Table {
    /// Validates `name`: a lowercase identifier (`[a-z_][a-z0-9_]*`, at
    /// most 63 bytes), optionally qualified by a schema of the same form.
    pub fn parse(name: &str) -> Result<Table> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|part| is_identifier(part)) {
            return Err(Error::usage(format!(
                "invalid state table name {name:?}: it must be a lowercase identifier ([a-z_][a-z0-9_]*, at most {MAX_IDENTIFIER_LEN} bytes), optionally schema-qualified as schema.table"
            )));
        }
        let sql = parts
            .iter()
            .map(|part| format!("\"{part}\""))
            .collect::<Vec<_>>()
            .join(".");
        Ok(Table { sql })
    }

    /// The statement that creates the table.
    pub fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             name text PRIMARY KEY, \
             key bigint NOT NULL, \
             token bigint NOT NULL CHECK (token > 0), \
             state text NOT NULL CHECK (state IN ('held', 'released')), \
             backend_pid integer, \
             pid integer, \
             host text, \
             start_time bigint, \
             boot_id text, \
             user_name text, \
             uid bigint, \
             command text[], \
             acquired_at timestamptz, \
             stop_within_ms bigint, \
             updated_at timestamptz NOT NULL DEFAULT now())",
            self.sql
        )
    }

    fn exists(&self, session: &mut Session) -> Result<bool> {
        let row = session
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.sql])
            .map_err(|failure| session.error("looking for the state table", failure))?;
        Ok(row.get(0))
    }

    /// Creates the table unless it exists. Two sessions creating it at the
    /// same moment can collide in the catalog even with `IF NOT EXISTS`;
    /// the loser looks again.
    pub fn ensure(&self, session: &mut Session) -> Result<()> {
        for _ in 0..CREATE_ATTEMPTS {
            if self.exists(session)? {
                return Ok(());
            }
            match session.batch(&self.ddl()) {
                Ok(()) => return Ok(()),
                Err(failure) if is_creation_race(&failure) => continue,
                Err(failure) if failure.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                    return Err(self.cannot_create(session, failure));
                }
                Err(failure) => return Err(session.error("creating the state table", failure)),
            }
        }
        Err(Error::unavailable(format!(
            "PostgreSQL at {}: the state table {} could not be created (other sessions kept creating and dropping it)",
            session.location(),
            self.sql
        )))
    }

    fn cannot_create(&self, session: &mut Session, failure: Failure) -> Error {
        let role = current_role(session);
        let error = Error::unavailable(format!(
            "cannot create the state table {} at {} ({}); have a privileged role run: {}; GRANT SELECT, INSERT, UPDATE ON {} TO {role}",
            self.sql,
            session.location(),
            failure.describe(),
            self.ddl(),
            self.sql
        ));
        failure.attach_to(error)
    }

    fn no_privilege(&self, session: &mut Session, failure: Failure) -> Error {
        let role = current_role(session);
        let error = Error::unavailable(format!(
            "no privilege on the state table {} at {} ({}); have its owner run: GRANT SELECT, INSERT, UPDATE ON {} TO {role}",
            self.sql,
            session.location(),
            failure.describe(),
            self.sql
        ));
        failure.attach_to(error)
    }

    /// Records a new holder while the advisory lock is held: the next
    /// token, committed before the lock is handed out; whether the
    /// previous holder left without a clean release, and how long it may
    /// take to stop its command after losing the lock (`stop_within`: its
    /// heartbeat deadline + kill grace; ours is recorded for the next).
    pub fn record_acquisition(
        &self,
        session: &mut Session,
        name: &LockName,
        key: i64,
        record: &Record,
        stop_within: Duration,
    ) -> Result<Acquisition> {
        // The CTE reads the row as it was before this statement: the
        // previous holder's state.
        let sql = format!(
            "WITH previous AS (SELECT state, stop_within_ms FROM {t} WHERE name = $1) \
             INSERT INTO {t} AS t (name, key, token, state, backend_pid, pid, host, start_time, \
                                   boot_id, user_name, uid, command, acquired_at, stop_within_ms, \
                                   updated_at) \
             VALUES ($1, $2, 1, 'held', pg_backend_pid(), $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                     now()) \
             ON CONFLICT (name) DO UPDATE SET \
               key = EXCLUDED.key, token = t.token + 1, state = 'held', \
               backend_pid = EXCLUDED.backend_pid, pid = EXCLUDED.pid, host = EXCLUDED.host, \
               start_time = EXCLUDED.start_time, boot_id = EXCLUDED.boot_id, \
               user_name = EXCLUDED.user_name, uid = EXCLUDED.uid, command = EXCLUDED.command, \
               acquired_at = EXCLUDED.acquired_at, stop_within_ms = EXCLUDED.stop_within_ms, \
               updated_at = now() \
             RETURNING t.token, (SELECT state FROM previous), t.backend_pid, \
                       (SELECT stop_within_ms FROM previous)",
            t = self.sql
        );
        let stop_within_ms = i64::try_from(stop_within.as_millis()).unwrap_or(i64::MAX);
        let acquired_at = record.acquired_time().unwrap_or_else(SystemTime::now);
        let result = session.query_one(
            &sql,
            &[
                &name.as_str(),
                &key,
                &i32::try_from(record.pid).ok(),
                &record.host,
                &record.start_time.and_then(|t| i64::try_from(t).ok()),
                &record.boot_id,
                &record.user,
                &i64::from(record.uid),
                &record.command,
                &acquired_at,
                &stop_within_ms,
            ],
        );
        let row = match result {
            Ok(row) => row,
            Err(failure) if failure.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(self.no_privilege(session, failure));
            }
            Err(failure) => return Err(session.error("recording the fencing token", failure)),
        };
        session.check_same_backend(row.get(2))?;
        let token: i64 = row.get(0);
        let previous: Option<String> = row.get(1);
        let previous_stop_within: Option<i64> = row.get(3);
        Ok(Acquisition {
            token: u64::try_from(token).unwrap_or(0),
            previous_was_held: previous.as_deref() == Some("held"),
            previous_stop_within: previous_stop_within
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis),
        })
    }

    /// Marks a clean release, so that the next holder needs no lock-delay.
    /// Only this holder's row is touched.
    pub fn mark_released(
        &self,
        session: &mut Session,
        name: &LockName,
        token: u64,
        deadline: Instant,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET state = 'released', updated_at = now() WHERE name = $1 AND token = $2",
            self.sql
        );
        let token = i64::try_from(token).unwrap_or(i64::MAX);
        let left = deadline.saturating_duration_since(Instant::now());
        session
            .execute_within(left, &sql, &[&name.as_str(), &token])
            .map(drop)
            .map_err(|failure| session.error("recording the release", failure))
    }

    /// The row of `name`, if the table and the row exist.
    pub fn row(&self, session: &mut Session, name: &str) -> Result<Option<Row>> {
        let sql = format!("SELECT {COLUMNS} FROM {} WHERE name = $1", self.sql);
        Ok(self.select(session, &sql, &[&name])?.into_iter().next())
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

fn is_identifier(part: &str) -> bool {
    let mut bytes = part.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && part.len() <= MAX_IDENTIFIER_LEN
}

/// Another session created the table (or its row type or index) between
/// our look and our `CREATE TABLE IF NOT EXISTS`.
fn is_creation_race(failure: &Failure) -> bool {
    [
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
    ]
    .iter()
    .any(|code| failure.code() == Some(code))
}

/// The session's role, quoted for a GRANT statement.
fn current_role(session: &mut Session) -> String {
    session
        .query_one("SELECT quote_ident(current_user)", &[])
        .map(|row| row.get(0))
        .unwrap_or_else(|_| "<your role>".to_owned())
}

/// What recording an acquisition found.
#[derive(Debug)]
pub(super) struct Acquisition {
    /// The fencing token of this acquisition.
    pub token: u64,
    /// The previous holder did not release cleanly.
    pub previous_was_held: bool,
    /// How long the previous holder may take to stop its command after
    /// losing the lock (its heartbeat deadline + kill grace), if recorded.
    pub previous_stop_within: Option<Duration>,
}

/// One lock's row of the state table.
#[derive(Debug)]
pub(super) struct Row {
    pub name: String,
    pub key: i64,
    pub token: u64,
    /// `held` until a clean release.
    pub state: String,
    /// The server process of the holder's session.
    pub backend_pid: Option<i32>,
    /// The holder's record, when every part of it is there.
    pub record: Option<Record>,
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
        }
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

/// A server session that holds or waits for a lock.
#[derive(Debug)]
pub(super) struct ServerSession {
    pub pid: i32,
    application_name: Option<String>,
    client: Option<String>,
    user: Option<String>,
    connected: Option<SystemTime>,
    waiting_since: Option<SystemTime>,
}

impl ServerSession {
    /// "backend pid 4242, application_name 'x', user bot, client 10.0.0.5:5000"
    fn describe(&self) -> String {
        let mut text = format!("backend pid {}", self.pid);
        if let Some(name) = self.application_name.as_deref().filter(|n| !n.is_empty()) {
            text.push_str(&format!(", application_name '{name}'"));
        }
        if let Some(user) = &self.user {
            text.push_str(&format!(", user {user}"));
        }
        text.push_str(&match &self.client {
            Some(client) => format!(", client {client}"),
            None => ", local socket or not visible to this role".to_owned(),
        });
        text
    }

    fn as_holder(&self) -> String {
        let mut text = format!("PostgreSQL {}", self.describe());
        if let Some(since) = self.connected {
            text.push_str(&format!(
                ", connected since {}",
                humantime::format_rfc3339_seconds(since)
            ));
        }
        text
    }

    fn as_waiter(&self) -> String {
        let mut text = self.describe();
        if let Some(since) = self.waiting_since {
            text.push_str(&format!(
                ", waiting since {}",
                humantime::format_rfc3339_seconds(since)
            ));
        }
        text
    }
}

/// Who holds and who waits for an advisory lock, as the server sees it.
#[derive(Debug, Default)]
pub(super) struct ServerView {
    pub holder: Option<ServerSession>,
    pub waiters: Vec<ServerSession>,
}

impl ServerView {
    /// The sessions holding (granted) and waiting for (not granted) `key`
    /// in this database, in the bigint form (`objsubid = 1`).
    pub fn read(session: &mut Session, key: i64) -> Result<ServerView> {
        let (classid, objid) = key_parts(key);
        let rows = session
            .query(
                "SELECT l.pid, l.granted, a.application_name, \
                        host(a.client_addr) || coalesce(':' || a.client_port, ''), \
                        a.usename::text, a.backend_start, a.query_start \
                 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1 \
                 ORDER BY l.granted DESC, a.query_start",
                &[&i64::from(classid), &i64::from(objid)],
            )
            .map_err(|failure| session.error("reading pg_locks", failure))?;
        let mut view = ServerView::default();
        for row in rows {
            let server_session = ServerSession {
                pid: row.get(0),
                application_name: row.get(2),
                client: row.get(3),
                user: row.get(4),
                connected: row.get(5),
                waiting_since: row.get(6),
            };
            if row.get::<_, bool>(1) && view.holder.is_none() {
                view.holder = Some(server_session);
            } else {
                view.waiters.push(server_session);
            }
        }
        Ok(view)
    }

    /// The waiters, one line each.
    pub fn waiter_lines(&self) -> Vec<String> {
        self.waiters.iter().map(ServerSession::as_waiter).collect()
    }

    /// The holder as [`Holder`]: the record comes from the state row only
    /// when that row belongs to the very session that holds the lock now.
    pub fn holder(&self, row: Option<&Row>) -> Holder {
        let Some(server) = &self.holder else {
            return Holder {
                record: None,
                pids: Vec::new(),
                detail: Some(
                    "nobody holds it any more: the holder released it just after our attempt"
                        .to_owned(),
                ),
            };
        };
        let current_row =
            row.filter(|row| row.state == "held" && row.backend_pid == Some(server.pid));
        let mut detail = server.as_holder();
        if current_row.is_none() {
            detail.push_str(
                "; not an onlyone holder: no record in the state table names this session (another program, or an onlyone holder still starting)",
            );
        }
        Holder {
            record: current_row.and_then(|row| row.record.clone()),
            pids: u32::try_from(server.pid).into_iter().collect(),
            detail: Some(detail),
        }
    }
}
