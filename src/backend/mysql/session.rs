//! One dedicated MySQL/MariaDB session: connecting it with the timeouts
//! that bound how long the server keeps a silent client, refusing a
//! read-only server and Galera, taking the named lock on it, and the
//! heartbeat's check that it still holds the lock.
//!
//! As in the PostgreSQL backend, every exchange has a deadline (a wait for
//! the lock is re-armed in rounds that each have one), so a frozen network
//! or server turns into an error instead of a hang; the driver runs on a
//! runtime of the session's own, and a timed-out request is dropped with
//! the session.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use tokio::runtime::Runtime;

use super::cluster::{self, GroupReplication};
use super::target::{SslMode, Target};
use super::tls;
use crate::backend::Wait;
use crate::error::{Error, Result};

/// How long connecting (TCP, handshake, authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long any other statement may take to be answered, beyond the time
/// it is meant to wait for the lock.
pub(super) const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// How long closing may take; the server ends the session anyway when the
/// socket goes.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// A wait for the lock is one `GET_LOCK` per round of at most this long,
/// each answered within the round + [`ANSWER_DEADLINE`]: a server that
/// stops answering during an unbounded wait is noticed.
const WAIT_ROUND: Duration = Duration::from_secs(10);

/// TCP keepalive of the client's socket: the first probe after this much
/// silence (the kernel's interval and count then apply).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);

/// Server error codes that mean the session is gone.
const SESSION_ENDING_CODES: [u16; 4] = [
    1053, // ER_SERVER_SHUTDOWN
    1927, // ER_CONNECTION_KILLED (MariaDB)
    4031, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8: idle past wait_timeout)
    1152, // ER_ABORTING_CONNECTION
];

/// ER_UNKNOWN_SYSTEM_VARIABLE: a variable this server does not have.
const UNKNOWN_VARIABLE: u16 = 1193;

/// Why a statement failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The server or the driver reported an error.
    Driver(mysql_async::Error),
    /// No answer within this deadline.
    Silent(Duration),
}

impl Failure {
    /// The server's error code, when the server sent one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Failure::Driver(mysql_async::Error::Server(err)) => Some(err.code),
            _ => None,
        }
    }

    /// Whether the session is gone: the connection broke, the server ended
    /// it, or no answer came.
    pub fn ends_session(&self) -> bool {
        match self {
            Failure::Driver(err) => {
                err.is_fatal()
                    || self
                        .code()
                        .is_some_and(|c| SESSION_ENDING_CODES.contains(&c))
            }
            Failure::Silent(_) => true,
        }
    }

    /// The error as one line; never contains the password (the driver is
    /// never given the URL).
    pub fn describe(&self) -> String {
        match self {
            Failure::Driver(mysql_async::Error::Server(err)) => {
                format!("{} (error {})", err.message, err.code)
            }
            Failure::Driver(mysql_async::Error::Io(err)) => {
                // The driver's own text repeats itself; its innermost cause
                // says what happened.
                let mut cause: &dyn std::error::Error = err;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                format!("the connection failed: {cause}")
            }
            Failure::Driver(err) => err.to_string(),
            Failure::Silent(deadline) => format!(
                "no answer within {} (is the network or the server down?)",
                humantime::format_duration(*deadline)
            ),
        }
    }
}

/// Held (read) while a thread is inside the driver: polling one of its
/// futures or dropping one of its objects. The driver keeps one buffer
/// pool per process (a lock-free queue behind a static) that every packet
/// read and write takes a buffer from and gives back to; a fork midway
/// through one of those left the child a queue whose next push spins
/// forever (a-final finding 1). The at-fork prepare hook takes it to
/// write ([`hold_for_fork`]): a fork waits at most for the polls under
/// way, never for a whole request (a `GET_LOCK` may wait for minutes).
static IN_DRIVER: RwLock<()> = RwLock::new(());

fn in_driver() -> RwLockReadGuard<'static, ()> {
    IN_DRIVER.read().unwrap_or_else(PoisonError::into_inner)
}

/// For the at-fork prepare hook: no thread in the driver until it is
/// dropped (see [`IN_DRIVER`]).
pub(crate) fn hold_for_fork() -> Box<dyn std::any::Any> {
    Box::new(IN_DRIVER.write().unwrap_or_else(PoisonError::into_inner))
}

/// A driver future whose every poll and whose drop are kept apart from
/// forks (see [`IN_DRIVER`]).
struct Apart<T>(Option<T>);

impl<T> Deref for Apart<T> {
    type Target = Option<T>;
    fn deref(&self) -> &Option<T> {
        &self.0
    }
}

impl<T> DerefMut for Apart<T> {
    fn deref_mut(&mut self) -> &mut Option<T> {
        &mut self.0
    }
}

impl<T> Drop for Apart<T> {
    fn drop(&mut self) {
        let _in_driver = in_driver();
        drop(self.0.take());
    }
}

impl<F: Future> Future for Apart<Pin<Box<F>>> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _in_driver = in_driver();
        self.0
            .as_mut()
            .expect("polled after it was dropped")
            .as_mut()
            .poll(cx)
    }
}

/// Runs `request` on `runtime`, answered within `deadline` (`None`:
/// without one).
fn call<T>(
    runtime: &Runtime,
    deadline: Option<Duration>,
    request: impl Future<Output = std::result::Result<T, mysql_async::Error>>,
) -> std::result::Result<T, Failure> {
    let request = Apart(Some(Box::pin(request)));
    match deadline {
        None => runtime.block_on(request).map_err(Failure::Driver),
        Some(deadline) => {
            match runtime.block_on(async { tokio::time::timeout(deadline, request).await }) {
                Ok(answer) => answer.map_err(Failure::Driver),
                Err(_) => Err(Failure::Silent(deadline)),
            }
        }
    }
}

/// The largest packet the driver reads or sends: 64 MiB, MySQL 8's
/// default `max_allowed_packet` (MariaDB's is 16 MiB).
const MAX_ALLOWED_PACKET: usize = 64 * 1024 * 1024;

/// `idle_limit` in whole seconds, rounded up, as `wait_timeout` takes it
/// (1 s to a year).
fn idle_seconds(idle_limit: Duration) -> u64 {
    let seconds = idle_limit.as_secs() + u64::from(idle_limit.subsec_nanos() > 0);
    seconds.clamp(1, 31_536_000)
}

/// Who holds a named lock, as the server sees it.
#[derive(Debug, Default)]
pub(super) struct ServerHolder {
    /// `IS_USED_LOCK`: the holder's connection id.
    pub connection_id: u64,
    /// From `information_schema.PROCESSLIST`, when this account may see
    /// that session (its own, or any with the PROCESS privilege).
    pub user: Option<String>,
    pub host: Option<String>,
    pub db: Option<String>,
    /// `performance_schema.threads.CONNECTION_TYPE` of that session
    /// (`SSL/TLS`, `TCP/IP`, `Socket`…), when the server keeps it and this
    /// account may read it: MySQL 8 by default, MariaDB only with
    /// `performance_schema = ON`.
    pub connection_type: Option<String>,
}

impl ServerHolder {
    /// "MySQL connection id 42, user bot, client 10.0.0.5:5000, database
    /// app, encrypted (TLS)"
    pub fn describe(&self) -> String {
        let mut text = format!("MySQL connection id {}", self.connection_id);
        match (&self.user, &self.host) {
            (Some(user), Some(host)) => text.push_str(&format!(", user {user}, client {host}")),
            _ => text.push_str(
                ", its user and client not visible to this account (that needs the PROCESS privilege)",
            ),
        }
        if let Some(db) = &self.db {
            text.push_str(&format!(", database {db}"));
        }
        if let Some(kind) = self.connection_type.as_deref() {
            text.push_str(&describe_connection_type(kind));
        }
        text
    }
}

/// ", encrypted (TLS)" or ", not encrypted (TCP/IP)" for a session's
/// `CONNECTION_TYPE`.
fn describe_connection_type(kind: &str) -> String {
    let kind = kind.trim();
    if kind.eq_ignore_ascii_case("SSL/TLS") {
        ", encrypted (TLS)".to_owned()
    } else {
        format!(", not encrypted ({kind})")
    }
}

/// Connects with the TLS of `target`'s `ssl-mode` (see [`super::tls`]);
/// whether the connection is encrypted.
fn connect(runtime: &Runtime, target: &Target, opts: OptsBuilder) -> Result<(Conn, bool)> {
    let tls_settings = &target.tls;
    let attempt = |ssl: Option<SslOpts>| {
        call(
            runtime,
            Some(CONNECT_TIMEOUT),
            Conn::new(opts.clone().ssl_opts(ssl)),
        )
    };
    let fail = |failure: Failure| {
        let why = match &failure {
            Failure::Driver(err) => tls::explain(err, tls_settings, &target.host),
            Failure::Silent(_) => None,
        };
        Error::unavailable(format!(
            "cannot connect to MySQL at {}: {}",
            target.location,
            why.unwrap_or_else(|| failure.describe())
        ))
    };
    let encrypted = |conn| (conn, true);
    match tls_settings.mode {
        SslMode::Disabled => attempt(None).map(|conn| (conn, false)).map_err(fail),
        SslMode::Preferred => match attempt(Some(tls::ssl_opts(tls_settings, None)?)) {
            Ok(conn) => Ok(encrypted(conn)),
            Err(Failure::Driver(err)) if tls::server_without_tls(&err) => {
                attempt(None).map(|conn| (conn, false)).map_err(fail)
            }
            Err(failure) => Err(fail(failure)),
        },
        SslMode::Required | SslMode::VerifyIdentity => {
            attempt(Some(tls::ssl_opts(tls_settings, None)?))
                .map(encrypted)
                .map_err(fail)
        }
        SslMode::VerifyCa => match attempt(Some(tls::ssl_opts(tls_settings, None)?)) {
            Ok(conn) => Ok(encrypted(conn)),
            Err(Failure::Driver(err)) => match tls::presented_name(&err) {
                Some(name) => attempt(Some(tls::ssl_opts(tls_settings, Some(&name))?))
                    .map(encrypted)
                    .map_err(fail),
                None => Err(fail(Failure::Driver(err))),
            },
            Err(failure) => Err(fail(failure)),
        },
    }
}

/// A connected session, used by one holder (or one status query) only.
pub(super) struct Session {
    runtime: Runtime,
    /// Dropped apart from forks (see [`IN_DRIVER`]): its buffers go back
    /// to the driver's pool.
    conn: Apart<Conn>,
    /// `CONNECTION_ID()`.
    id: u64,
    location: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects a fresh session that the server ends once it has sat idle
    /// for `idle_limit` (`wait_timeout`, `interactive_timeout`, whole
    /// seconds, rounded up), and refuses a read-only server, a Galera
    /// node and a Group Replication member.
    pub fn open(target: &Target, idle_limit: Duration) -> Result<Session> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| {
                Error::unavailable("cannot start the MySQL driver's runtime").with_source(err)
            })?;
        let opts = OptsBuilder::default()
            .ip_or_hostname(target.host.clone())
            .tcp_port(target.port)
            .user(Some(target.user.clone()))
            .pass(target.password.clone())
            .db_name(target.database.clone())
            .prefer_socket(false)
            // Both given, the driver does not ask the server for them (a
            // round trip). The packet limit is MySQL 8's default; nothing
            // onlyone reads comes near it. wait_timeout here is the
            // driver's own idea, for pools; the server's is set below.
            .max_allowed_packet(Some(MAX_ALLOWED_PACKET))
            .wait_timeout(Some(
                usize::try_from(idle_seconds(idle_limit)).unwrap_or(usize::MAX),
            ))
            .tcp_keepalive(Some(KEEPALIVE_IDLE))
            .tcp_nodelay(true)
            // Affected rows count the rows matched, changed or not.
            .client_found_rows(true)
            .stmt_cache_size(0);
        let (conn, encrypted) = connect(&runtime, target, opts)?;
        let mut session = Session {
            runtime,
            conn: Apart(Some(conn)),
            id: 0,
            location: target.location.clone(),
        };
        session.configure(idle_limit, target.database.as_deref())?;
        log::debug!(
            "MySQL session {} at {}: {}",
            session.id,
            session.location,
            tls::describe(target.tls.mode, encrypted)
        );
        Ok(session)
    }

    fn conn(&mut self) -> (&Runtime, &mut Conn) {
        (
            &self.runtime,
            self.conn
                .as_mut()
                .expect("the connection is there until closed"),
        )
    }

    /// The session's timeouts, and the checks of the server.
    fn configure(&mut self, idle_limit: Duration, database: Option<&str>) -> Result<()> {
        let seconds = idle_seconds(idle_limit);
        self.execute(&format!(
            "SET SESSION wait_timeout = {seconds}, SESSION interactive_timeout = {seconds}"
        ))
        .map_err(|failure| self.error("configuring the session", failure))?;
        // onlyone times its statements itself: a statement time limit of
        // the account or the server (MariaDB's max_statement_time, MySQL's
        // max_execution_time) would end the waits that have none of their
        // own, for the lock and for fenced transactions. Each server has
        // one of the two.
        for limit in ["max_statement_time", "max_execution_time"] {
            match self.execute(&format!("SET SESSION {limit} = 0")) {
                Ok(()) => {}
                Err(failure) if failure.code() == Some(UNKNOWN_VARIABLE) => {}
                Err(failure) => return Err(self.error("configuring the session", failure)),
            }
        }
        let (id, read_only, folds_case): (u64, i64, i64) = self
            .query_first(
                "SELECT CONNECTION_ID(), @@global.read_only, @@global.lower_case_table_names",
            )
            .map_err(|failure| self.error("checking the server", failure))?
            .ok_or_else(|| self.error_text("checking the server", "no answer row"))?;
        self.id = id;
        // The lock name is made of the database as the URL spells it; a
        // server that compares database names without case would let
        // `/App` and `/app` (one database, one state table) take two
        // different server locks for one name.
        if let Some(database) = database.filter(|db| folds_case != 0 && *db != db.to_lowercase()) {
            return Err(Error::unsafe_(format!(
                "refusing the MySQL server at {}: it compares database names without case (lower_case_table_names = {folds_case}), so the database '{database}' must be written in lower case in the URL ('{}'): lock names are made of the database as written, and two spellings of one database would be two locks",
                self.location,
                database.to_lowercase()
            )));
        }
        // MySQL's super_read_only implies read_only, but it is cheap to ask.
        // (One SELECT per variable: a SELECT of one the server lacks fails.
        // SHOW GLOBAL VARIABLES, which leaves it out, took MariaDB 10.11
        // 0.68 ms in its slow log, each SELECT under 0.1 ms: slower than
        // the two round trips it saves on loopback.)
        let super_read_only = self.variable("@@global.super_read_only")?;
        if read_only != 0 || super_read_only.is_some_and(|v| v != "0" && v != "OFF") {
            return Err(Error::unsafe_(format!(
                "refusing the MySQL server at {}: it is read-only (@@read_only or @@super_read_only is on: a replica?), and named locks are not replicated, so a lock taken there excludes nobody; connect to the primary",
                self.location
            )));
        }
        let wsrep = self.variable("@@global.wsrep_on")?;
        if cluster::galera_node(wsrep.as_deref()) {
            return Err(Error::unsafe_(format!(
                "refusing the MySQL server at {}: it is a Galera cluster node (wsrep_on is ON), where GET_LOCK locks are node-local and exclude nobody on the other nodes",
                self.location
            )));
        }
        let group_name = self.variable("@@global.group_replication_group_name")?;
        if let Some(why) = self.group_replication(group_name)?.refusal() {
            return Err(Error::unsafe_(format!(
                "refusing the MySQL server at {}: {why}, where GET_LOCK locks are node-local and exclude nobody on the other members; use a server outside the group",
                self.location
            )));
        }
        Ok(())
    }

    /// What the server says about MySQL Group Replication: the group's
    /// name (`group_name`, as read: an unknown variable on MariaDB), and
    /// only when one is set, the plugin's status and this server's member
    /// state (one more round trip).
    fn group_replication(&mut self, group_name: Option<String>) -> Result<GroupReplication> {
        if !GroupReplication::configured(group_name.as_deref()) {
            return Ok(GroupReplication {
                group_name,
                ..GroupReplication::default()
            });
        }
        let (plugin_status, member_state): (Option<String>, Option<String>) = self
            .query_first(
                "SELECT (SELECT PLUGIN_STATUS FROM information_schema.PLUGINS \
                         WHERE PLUGIN_NAME = 'group_replication'), \
                        (SELECT MEMBER_STATE FROM performance_schema.replication_group_members \
                         WHERE MEMBER_ID = @@global.server_uuid)",
            )
            .map_err(|failure| self.error("checking the server's Group Replication", failure))?
            .unwrap_or_default();
        Ok(GroupReplication {
            group_name,
            plugin_status,
            member_state,
        })
    }

    /// A global variable's value as text, `None` when this server does
    /// not have it.
    fn variable(&mut self, variable: &str) -> Result<Option<String>> {
        match self.query_first::<(Option<String>,)>(&format!("SELECT CAST({variable} AS CHAR)")) {
            Ok(row) => Ok(row.and_then(|(value,)| value)),
            Err(failure) if failure.code() == Some(UNKNOWN_VARIABLE) => Ok(None),
            Err(failure) => Err(self.error("checking the server", failure)),
        }
    }

    /// This session's `CONNECTION_ID()`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `mysql://user@host:port/db`, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A statement without result, answered within [`ANSWER_DEADLINE`].
    pub fn execute(&mut self, sql: &str) -> std::result::Result<(), Failure> {
        self.execute_within(ANSWER_DEADLINE, sql)
    }

    /// A statement without result, answered within `deadline`.
    pub fn execute_within(
        &mut self,
        deadline: Duration,
        sql: &str,
    ) -> std::result::Result<(), Failure> {
        let (runtime, conn) = self.conn();
        call(runtime, Some(deadline), conn.query_drop(sql))
    }

    /// A statement with parameters, without result; its affected rows.
    pub fn exec_within(
        &mut self,
        deadline: Duration,
        sql: &str,
        params: Vec<mysql_async::Value>,
    ) -> std::result::Result<u64, Failure> {
        let (runtime, conn) = self.conn();
        call(runtime, Some(deadline), async {
            conn.exec_drop(sql, params).await?;
            Ok(conn.affected_rows())
        })
    }

    /// A query's first row, answered within [`ANSWER_DEADLINE`].
    pub fn query_first<T: mysql_async::prelude::FromRow + Send + 'static>(
        &mut self,
        sql: &str,
    ) -> std::result::Result<Option<T>, Failure> {
        let (runtime, conn) = self.conn();
        call(runtime, Some(ANSWER_DEADLINE), conn.query_first(sql))
    }

    /// A query's rows, with parameters, answered within
    /// [`ANSWER_DEADLINE`].
    pub fn exec_rows<T: mysql_async::prelude::FromRow + Send + 'static>(
        &mut self,
        sql: &str,
        params: Vec<mysql_async::Value>,
    ) -> std::result::Result<Vec<T>, Failure> {
        let (runtime, conn) = self.conn();
        call(runtime, Some(ANSWER_DEADLINE), conn.exec(sql, params))
    }

    /// A query's rows, with parameters, answered within `deadline`.
    pub fn exec_rows_within<T: mysql_async::prelude::FromRow + Send + 'static>(
        &mut self,
        deadline: Duration,
        sql: &str,
        params: Vec<mysql_async::Value>,
    ) -> std::result::Result<Vec<T>, Failure> {
        let (runtime, conn) = self.conn();
        call(runtime, Some(deadline), conn.exec(sql, params))
    }

    /// A query's rows, with parameters, answered whenever the server
    /// answers: for a wait in the server's lock queue that has no deadline.
    pub fn exec_rows_waiting<T: mysql_async::prelude::FromRow + Send + 'static>(
        &mut self,
        sql: &str,
        params: Vec<mysql_async::Value>,
    ) -> std::result::Result<Vec<T>, Failure> {
        let (runtime, conn) = self.conn();
        call(runtime, None, conn.exec(sql, params))
    }

    /// Takes the named lock `lock` (already mapped, see `lock_name_for`):
    /// true when taken, false when someone else holds it (at the
    /// deadline). A wait is `GET_LOCK` in the server, re-armed every
    /// [`WAIT_ROUND`]; `KILL QUERY` of this session ends it with an error.
    pub fn get_lock(&mut self, lock: &str, wait: Wait) -> Result<bool> {
        let deadline = match wait {
            Wait::No => return self.get_lock_round(lock, Duration::ZERO),
            Wait::Until(deadline) => deadline,
        };
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let round = left.unwrap_or(WAIT_ROUND).min(WAIT_ROUND);
            if self.get_lock_round(lock, round)? {
                return Ok(true);
            }
            if left.is_some_and(|left| left <= round) {
                return Ok(false);
            }
        }
    }

    fn get_lock_round(&mut self, lock: &str, round: Duration) -> Result<bool> {
        let sql = format!(
            "SELECT GET_LOCK('{}', {}.{:03})",
            literal(lock),
            round.as_secs(),
            round.subsec_millis()
        );
        let got: Option<(Option<i64>,)> = {
            let (runtime, conn) = self.conn();
            call(
                runtime,
                Some(round.saturating_add(ANSWER_DEADLINE)),
                conn.query_first(sql),
            )
        }
        .map_err(|failure| self.error("taking the lock", failure))?;
        match got.and_then(|(got,)| got) {
            Some(1) => Ok(true),
            Some(_) => Ok(false),
            None => Err(Error::unavailable(format!(
                "MySQL at {} ended the wait for lock '{lock}' (GET_LOCK returned NULL: the statement was killed)",
                self.location
            ))),
        }
    }

    /// Who holds the named lock `lock`, as the server sees it: `None` when
    /// free.
    pub fn holder(&mut self, lock: &str) -> Result<Option<ServerHolder>> {
        let used: Option<(Option<u64>,)> = self
            .query_first(&format!("SELECT IS_USED_LOCK('{}')", literal(lock)))
            .map_err(|failure| self.error("reading who holds the lock", failure))?;
        let Some(connection_id) = used.and_then(|(id,)| id) else {
            return Ok(None);
        };
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = self
            .exec_rows(
                "SELECT USER, HOST, DB FROM information_schema.PROCESSLIST WHERE ID = ?",
                vec![connection_id.into()],
            )
            .map_err(|failure| self.error("reading the process list", failure))?;
        let (user, host, db) = rows.into_iter().next().unwrap_or_default();
        // Whether that session is encrypted: only the performance schema
        // says, when it is on and readable; otherwise not said.
        let connection_type = self
            .exec_rows::<(Option<String>,)>(
                "SELECT CONNECTION_TYPE FROM performance_schema.threads WHERE PROCESSLIST_ID = ?",
                vec![connection_id.into()],
            )
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .and_then(|(kind,)| kind)
            .filter(|kind| !kind.trim().is_empty());
        Ok(Some(ServerHolder {
            connection_id,
            user,
            host,
            db,
            connection_type,
        }))
    }

    /// One heartbeat, answered within `deadline`: the server still shows
    /// the lock held by this very session, and is not read-only. `Err` is
    /// why the lock must be considered lost.
    pub fn beat(&mut self, lock: &str, deadline: Duration) -> std::result::Result<(), String> {
        let sql = format!(
            "SELECT IS_USED_LOCK('{}'), CONNECTION_ID(), @@global.read_only",
            literal(lock)
        );
        let answer: std::result::Result<Option<(Option<u64>, u64, i64)>, Failure> = {
            let (runtime, conn) = self.conn();
            call(runtime, Some(deadline), conn.query_first(sql))
        };
        match answer {
            Err(Failure::Silent(_)) => Err(format!(
                "no heartbeat answer from MySQL at {} within the heartbeat deadline: the network or the server may be down, and the server drops a silent session, and its lock, soon after",
                self.location
            )),
            Err(failure) => Err(format!(
                "the MySQL session holding the lock failed ({}); the lock must be considered gone",
                failure.describe()
            )),
            Ok(Some((_, id, _))) if id != self.id => Err(format!(
                "the MySQL session of the lock changed from connection id {} to {id} (a proxy that reconnects?); the lock must be considered gone",
                self.id
            )),
            Ok(Some((_, _, read_only))) if read_only != 0 => Err(format!(
                "the MySQL server at {} became read-only (a failover?); named locks are not replicated, so the lock is gone",
                self.location
            )),
            Ok(Some((Some(holder), _, _))) if holder == self.id => Ok(()),
            Ok(Some((holder, _, _))) => Err(format!(
                "the MySQL server no longer shows lock '{lock}' as held by this session (connection id {}; IS_USED_LOCK says {})",
                self.id,
                holder.map_or("nobody".to_owned(), |h| h.to_string())
            )),
            Ok(None) => Err("the MySQL heartbeat got no answer row".to_owned()),
        }
    }

    /// Releases the named lock, answered by `deadline` (a server that says
    /// it was not held is logged).
    pub fn release_lock(&mut self, lock: &str, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let released: Option<(Option<i64>,)> = {
            let (runtime, conn) = self.conn();
            call(
                runtime,
                Some(left),
                conn.query_first(format!("SELECT RELEASE_LOCK('{}')", literal(lock))),
            )
        }
        .map_err(|failure| self.error("releasing the lock", failure))?;
        if released.and_then(|(r,)| r) != Some(1) {
            log::warn!(
                "MySQL at {} says lock '{lock}' was not held by this session at release",
                self.location
            );
        }
        Ok(())
    }

    /// Ends the session: the server then frees whatever it still holds.
    pub fn close(mut self) {
        if let Some(conn) = self.conn.take()
            && call(&self.runtime, Some(CLOSE_DEADLINE), conn.disconnect()).is_err()
        {
            log::debug!("closing the MySQL session timed out or failed; dropping its socket");
        }
    }

    /// Drops the session without a goodbye, for one already known to be
    /// lost: closing the socket ends the session at the server, if the
    /// server can still hear it.
    pub fn abandon(self) {
        let Session { runtime, conn, .. } = self;
        // Dropped apart from forks (see `Apart`).
        drop(conn);
        runtime.shutdown_background();
    }

    /// An error from a statement of this session, as one line.
    pub fn error(&self, doing: &str, failure: Failure) -> Error {
        let error = Error::unavailable(format!(
            "MySQL at {} failed while {doing}: {}",
            self.location,
            failure.describe()
        ))
        .ending_session(failure.ends_session());
        // The description has what the driver's error says (its own text
        // would repeat the server's message), so it is not attached.
        error
    }

    fn error_text(&self, doing: &str, what: &str) -> Error {
        Error::unavailable(format!(
            "MySQL at {} failed while {doing}: {what}",
            self.location
        ))
    }
}

/// `text` inside a single-quoted SQL string. Lock names mapped by onlyone
/// are only `A-Z a-z 0-9 . _ - @ /`; anything else is escaped anyway.
pub(super) fn literal(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "''")
}
