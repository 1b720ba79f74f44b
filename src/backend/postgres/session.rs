//! One dedicated database session: connecting it with the timeouts that
//! bound how long a dead peer keeps it, taking the advisory lock on it, and
//! the heartbeat's check that it still holds the lock.
//!
//! Every exchange with the server has a deadline (only an unbounded wait
//! for the lock has none), so a frozen network or server turns into an
//! error instead of a hang. That is why the session drives the
//! asynchronous driver on a runtime of its own: a timed-out request is
//! dropped, and the session with it.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::conninfo::Target;
use super::key_parts;
use crate::error::{Error, Result};

/// How long connecting (TCP, startup and authentication) may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long any other statement may take to be answered, beyond the time
/// it is meant to wait for the lock.
pub(super) const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// How long closing may take; the server ends the session anyway when the
/// socket goes.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// TCP keepalive, on both ends: the first probe after this much silence…
pub(super) const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// …then one probe every this often…
pub(super) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// …and the peer is dead after this many unanswered probes.
pub(super) const KEEPALIVE_COUNT: u32 = 3;
/// Data left unacknowledged this long also means the peer is dead.
pub(super) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session whose backend pid changes cannot hold a lock.
const POOLER_MESSAGE: &str = "the connection goes through a transaction-mode pooler (such as PgBouncer), where a session lock is taken and released on different server sessions; connect onlyone to the server directly";

/// How long to wait for the lock.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wait {
    /// Try once.
    No,
    /// Wait in the server's lock queue until the deadline, or without
    /// limit.
    Until(Option<Instant>),
}

/// Why a statement failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The server or the driver reported an error.
    Server(tokio_postgres::Error),
    /// No answer within this deadline.
    Silent(Duration),
}

impl Failure {
    /// The SQLSTATE, when the server sent one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Failure::Server(err) => err.code(),
            Failure::Silent(_) => None,
        }
    }

    /// Whether the session is gone: the server ended it (a terminated
    /// backend, a shutdown, an idle timeout), the connection broke, or no
    /// answer came.
    pub fn ends_session(&self) -> bool {
        match self {
            Failure::Server(err) => {
                err.is_closed()
                    || err.as_db_error().is_none()
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::IDLE_SESSION_TIMEOUT,
                    ]
                    .iter()
                    .any(|code| err.code() == Some(code))
            }
            Failure::Silent(_) => true,
        }
    }

    /// The error as one line.
    pub fn describe(&self) -> String {
        match self {
            Failure::Server(err) => describe(err),
            Failure::Silent(deadline) => format!(
                "no answer within {} (is the network or the server down?)",
                humantime::format_duration(*deadline)
            ),
        }
    }

    /// Adds the driver's error, if any, as the source of `error`.
    pub fn attach_to(self, error: Error) -> Error {
        match self {
            Failure::Server(err) => error.with_source(err),
            Failure::Silent(_) => error,
        }
    }
}

/// A connected session, used by one holder (or one status query) only.
pub(super) struct Session {
    runtime: Runtime,
    client: Client,
    connection: JoinHandle<()>,
    backend_pid: i32,
    location: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("backend_pid", &self.backend_pid)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects a fresh session named `application_name`, makes the DBA's
    /// timeouts unable to end it, and refuses a standby.
    pub fn open(target: &Target, application_name: &str) -> Result<Session> {
        let location = target.location.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| {
                Error::unavailable("cannot start the PostgreSQL driver's runtime").with_source(err)
            })?;
        let mut config = target.config.clone();
        config
            .application_name(application_name)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_COUNT)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        config.connect_timeout(connect_timeout);
        // The timer must be made inside the runtime.
        let connected = runtime
            .block_on(async { tokio::time::timeout(connect_timeout, config.connect(NoTls)).await });
        let (client, connection) = match connected {
            Ok(Ok(connected)) => connected,
            Ok(Err(err)) => return Err(connect_error(&err, &location).with_source(err)),
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "cannot connect to PostgreSQL at {location}: {}",
                    Failure::Silent(connect_timeout).describe()
                )));
            }
        };
        let connection = runtime.spawn(async move {
            if let Err(err) = connection.await {
                log::debug!("the PostgreSQL connection ended: {}", describe(&err));
            }
        });
        let mut session = Session {
            runtime,
            client,
            connection,
            backend_pid: 0,
            location,
        };
        session.configure()?;
        Ok(session)
    }

    /// The server-side settings of a lock session, and the standby check.
    fn configure(&mut self) -> Result<()> {
        // The DBA's timeouts must not end a session that holds a lock; a
        // wait is bounded by lock_timeout, set per wait.
        self.batch(
            "SET statement_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0; \
             SET lock_timeout = 0",
        )
        .map_err(|failure| self.error("configuring the session", failure))?;
        // The server drops a silently dead client (and its lock) after
        // KEEPALIVE_IDLE + KEEPALIVE_COUNT × KEEPALIVE_INTERVAL.
        self.batch(&format!(
            "SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; SET tcp_keepalives_count = {}",
            KEEPALIVE_IDLE.as_secs(),
            KEEPALIVE_INTERVAL.as_secs(),
            KEEPALIVE_COUNT
        ))
        .map_err(|failure| self.error("configuring the session", failure))?;
        // Newer settings (PostgreSQL 14 and 12): harmless to miss on an
        // older server, which cannot end an idle session anyway.
        self.set_if_known("idle_session_timeout", "0")?;
        self.set_if_known(
            "tcp_user_timeout",
            &TCP_USER_TIMEOUT.as_millis().to_string(),
        )?;
        let row = self
            .query_one("SELECT pg_backend_pid(), pg_is_in_recovery()", &[])
            .map_err(|failure| self.error("checking the server", failure))?;
        self.backend_pid = row.get(0);
        if row.get::<_, bool>(1) {
            return Err(Error::unsafe_(format!(
                "refusing the PostgreSQL server at {}: it is a standby (in recovery), and advisory locks are not replicated, so a lock taken there excludes nobody; connect to the primary",
                self.location
            )));
        }
        Ok(())
    }

    /// Sets `setting` unless the server is too old to know it.
    pub fn set_if_known(&mut self, setting: &str, value: &str) -> Result<()> {
        match self.batch(&format!("SET {setting} = {value}")) {
            Ok(()) => Ok(()),
            Err(failure) if failure.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                log::debug!("the server does not know {setting}; not setting it");
                Ok(())
            }
            Err(failure) => Err(self.error("configuring the session", failure)),
        }
    }

    /// Runs `request` with a deadline (`None`: without one).
    fn call<T>(
        &self,
        deadline: Option<Duration>,
        request: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> std::result::Result<T, Failure> {
        match deadline {
            None => self.runtime.block_on(request).map_err(Failure::Server),
            Some(deadline) => match self
                .runtime
                .block_on(async { tokio::time::timeout(deadline, request).await })
            {
                Ok(answer) => answer.map_err(Failure::Server),
                Err(_) => Err(Failure::Silent(deadline)),
            },
        }
    }

    /// Statements without parameters, in one round trip.
    pub fn batch(&self, sql: &str) -> std::result::Result<(), Failure> {
        self.call(Some(ANSWER_DEADLINE), self.client.batch_execute(sql))
    }

    /// A query's rows.
    pub fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, Failure> {
        self.call(Some(ANSWER_DEADLINE), self.client.query(sql, params))
    }

    /// A query's one row.
    pub fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, Failure> {
        self.call(Some(ANSWER_DEADLINE), self.client.query_one(sql, params))
    }

    /// A statement's row count, answered within `deadline`.
    pub fn execute_within(
        &self,
        deadline: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, Failure> {
        self.call(Some(deadline), self.client.execute(sql, params))
    }

    /// `postgres://host:port/db`, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Takes the advisory lock `key`: true when taken, false when someone
    /// else holds it (at the deadline).
    pub fn lock(&mut self, key: i64, wait: Wait) -> Result<bool> {
        match wait {
            Wait::No => self.try_lock(key),
            Wait::Until(Some(deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // lock_timeout = 0 would mean "wait forever".
                if left.as_millis() == 0 {
                    return self.try_lock(key);
                }
                // The setting is an int of milliseconds (about 24 days).
                let millis = left.as_millis().min(i32::MAX as u128);
                self.batch(&format!("SET lock_timeout = '{millis}ms'"))
                    .map_err(|failure| self.error("setting the wait's timeout", failure))?;
                let locked = self.blocking_lock(key, Some(left.saturating_add(ANSWER_DEADLINE)))?;
                self.batch("SET lock_timeout = 0")
                    .map_err(|failure| self.error("resetting the wait's timeout", failure))?;
                Ok(locked)
            }
            Wait::Until(None) => self.blocking_lock(key, None),
        }
    }

    fn try_lock(&mut self, key: i64) -> Result<bool> {
        let row = self
            .query_one("SELECT pg_try_advisory_lock($1), pg_backend_pid()", &[&key])
            .map_err(|failure| self.error("taking the lock", failure))?;
        self.check_same_backend(row.get(1))?;
        Ok(row.get(0))
    }

    /// Waits in the server's lock queue; the server wakes us the moment
    /// the holder lets go.
    fn blocking_lock(&mut self, key: i64, deadline: Option<Duration>) -> Result<bool> {
        let params: [&(dyn ToSql + Sync); 1] = [&key];
        let request = self
            .client
            .query_one("SELECT pg_backend_pid() FROM pg_advisory_lock($1)", &params);
        match self.call(deadline, request) {
            Ok(row) => {
                self.check_same_backend(row.get(0))?;
                Ok(true)
            }
            Err(failure) if failure.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
            Err(failure) => Err(self.error("waiting for the lock", failure)),
        }
    }

    /// Refuses a session whose statements land on different server
    /// processes: its session lock would be nobody's.
    pub fn check_same_backend(&self, pid: i32) -> Result<()> {
        if pid == self.backend_pid {
            Ok(())
        } else {
            Err(Error::unsafe_(format!(
                "refusing the PostgreSQL connection to {}: the server process changed from pid {} to {pid} between statements; {POOLER_MESSAGE}",
                self.location, self.backend_pid
            )))
        }
    }

    /// Prepares the heartbeat's one query.
    pub fn prepare_beat(&self) -> Result<Statement> {
        let request = self.client.prepare(
            "SELECT pg_backend_pid(), pg_is_in_recovery(), EXISTS ( \
               SELECT 1 FROM pg_locks \
               WHERE locktype = 'advisory' AND classid::bigint = $1 AND objid::bigint = $2 \
                 AND objsubid = 1 AND pid = pg_backend_pid() AND granted)",
        );
        self.call(Some(ANSWER_DEADLINE), request)
            .map_err(|failure| self.error("preparing the heartbeat", failure))
    }

    /// One heartbeat, answered within `deadline`: this session is still
    /// the one that took the lock, on a primary, and the server still shows
    /// the lock granted to it. `Err` is why the lock must be considered
    /// lost.
    pub fn beat(
        &self,
        statement: &Statement,
        key: i64,
        deadline: Duration,
    ) -> std::result::Result<(), String> {
        let (classid, objid) = key_parts(key);
        let (classid, objid) = (i64::from(classid), i64::from(objid));
        let row = match self.call(
            Some(deadline),
            self.client.query_one(statement, &[&classid, &objid]),
        ) {
            Ok(row) => row,
            Err(Failure::Silent(_)) => {
                return Err(format!(
                    "no heartbeat answer from PostgreSQL at {} within the heartbeat deadline: the network or the server may be down, and the server drops a silent session, and its lock, soon after",
                    self.location
                ));
            }
            // The heartbeat's prepared statement exists only in the session
            // that prepared it: another session answering means a pooler
            // handed the connection to a different server process.
            Err(failure) if failure.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) => {
                return Err(format!(
                    "the PostgreSQL server session of the lock changed under the connection ({}): {POOLER_MESSAGE}",
                    failure.describe()
                ));
            }
            Err(failure) => {
                return Err(format!(
                    "the PostgreSQL session holding the lock failed ({}); the lock must be considered gone",
                    failure.describe()
                ));
            }
        };
        let answer: (Option<i32>, Option<bool>, Option<bool>) = (
            row.try_get(0).ok().flatten(),
            row.try_get(1).ok().flatten(),
            row.try_get(2).ok().flatten(),
        );
        match answer {
            (Some(pid), _, _) if pid != self.backend_pid => Err(format!(
                "the PostgreSQL server process of the lock session changed from pid {} to {pid}: {POOLER_MESSAGE}",
                self.backend_pid
            )),
            (Some(_), Some(true), _) => Err(
                "the PostgreSQL server became a standby (a failover?); advisory locks are not replicated, so the lock is gone"
                    .to_owned(),
            ),
            (Some(_), Some(false), Some(true)) => Ok(()),
            (Some(_), Some(false), Some(false)) => Err(format!(
                "the PostgreSQL server no longer shows advisory lock {key} as held by this session"
            )),
            _ => Err("the PostgreSQL heartbeat got an incomplete answer".to_owned()),
        }
    }

    /// Releases the advisory lock, answered by `deadline` (a `false` from
    /// the server means it was not held: logged).
    pub fn unlock(&self, key: i64, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let row = self
            .call(
                Some(left),
                self.client
                    .query_one("SELECT pg_advisory_unlock($1)", &[&key]),
            )
            .map_err(|failure| self.error("releasing the lock", failure))?;
        if !row.get::<_, bool>(0) {
            log::warn!(
                "PostgreSQL at {} says advisory lock {key} was not held by this session at release",
                self.location
            );
        }
        Ok(())
    }

    /// Ends the session: the server then frees whatever it still holds.
    pub fn close(self) {
        let Session {
            runtime,
            client,
            connection,
            ..
        } = self;
        // Without a client left, the connection says goodbye and ends.
        drop(client);
        if runtime
            .block_on(async { tokio::time::timeout(CLOSE_DEADLINE, connection).await })
            .is_err()
        {
            log::debug!("closing the PostgreSQL session timed out; dropping its socket");
        }
    }

    /// Drops the session without a goodbye, for one already known to be
    /// lost: waiting for a server that does not answer would only hold up
    /// the supervisor. Closing the socket ends the session at the server,
    /// if the server can still hear it.
    pub fn abandon(self) {
        let Session {
            runtime,
            client,
            connection,
            ..
        } = self;
        drop(client);
        drop(connection);
        runtime.shutdown_background();
    }

    /// An error from a statement of this session, as one line.
    pub fn error(&self, doing: &str, failure: Failure) -> Error {
        let error = Error::unavailable(format!(
            "PostgreSQL at {} failed while {doing}: {}",
            self.location,
            failure.describe()
        ))
        .ending_session(failure.ends_session());
        failure.attach_to(error)
    }
}

/// One line for a failed connection attempt, with what to do about it.
fn connect_error(err: &tokio_postgres::Error, location: &str) -> Error {
    let hint = match err.code() {
        Some(&SqlState::TOO_MANY_CONNECTIONS) => {
            " (max_connections is exhausted; every holder needs a connection of its own)"
        }
        Some(&SqlState::INVALID_PASSWORD) => " (wrong password?)",
        _ => "",
    };
    Error::unavailable(format!(
        "cannot connect to PostgreSQL at {location}: {}{hint}",
        describe(err)
    ))
}

/// The driver's error as one line: the server's message, or the error and
/// its causes (the driver's own `Display` leaves the causes out). Neither
/// ever contains the password.
pub(super) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_owned();
    }
    let mut line = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
