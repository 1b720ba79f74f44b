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
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use tokio::runtime::Runtime;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Row, SimpleQueryMessage, Statement};

use super::connect::{
    self, Connected, KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, TCP_USER_TIMEOUT,
};
use super::conninfo::Target;
use super::failure::Failure;
use super::failure::describe;
use super::key_parts;
use super::tls::Connector;
use crate::backend::Wait;
use crate::error::{Error, Result};

/// How long any other statement may take to be answered, beyond the time
/// it is meant to wait for the lock.
pub(super) const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// How long closing may take; the server ends the session anyway when the
/// socket goes.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// How long sending a cancel request may take.
const CANCEL_DEADLINE: Duration = Duration::from_secs(5);

/// Why a session whose backend pid changes cannot hold a lock.
pub(super) const POOLER_MESSAGE: &str = "the connection goes through a transaction-mode pooler (such as PgBouncer), where a session lock is taken and released on different server sessions; connect onlyone to the server directly";

/// A connected session, used by one holder (or one status query) only.
pub(super) struct Session {
    runtime: Runtime,
    client: Client,
    connection: JoinHandle<()>,
    backend_pid: i32,
    location: String,
    /// How the connection was encrypted, for cancel requests.
    tls_config: Option<Arc<ClientConfig>>,
    /// The idle limit last set by [`Session::expire_when_idle`]: setting
    /// the same one again is skipped.
    idle_limit: Option<Duration>,
    /// The payloads of notifications on the channels this session listens
    /// to, as they arrive while the runtime runs.
    notifications: UnboundedReceiver<String>,
    /// The error that ended the connection between statements (the
    /// server's reason for ending the session arrives while no statement
    /// waits for it), for the next statement's failure to tell.
    ended: Arc<std::sync::Mutex<Option<tokio_postgres::Error>>>,
    /// On a shared session: the instant by which every statement must be
    /// answered (the heartbeat deadline of the names it holds), whatever
    /// the statement's own deadline. Past it the statement fails as
    /// unanswered.
    cutoff: Option<Instant>,
    /// On a shared session: the statements prepared once and kept, by
    /// their text (see [`Session::keep_statements`]).
    kept: Option<std::sync::Mutex<std::collections::HashMap<String, Statement>>>,
    /// Statements without parameters (and without an answer that matters
    /// before the next one) sent ahead of the next statement, in its
    /// round trip (see [`Session::send_ahead`]).
    ahead: std::sync::Mutex<String>,
}

/// How many statements a session keeps prepared at most: the few an
/// acquisition, a release and a heartbeat run over and over.
const KEPT_STATEMENTS: usize = 32;

/// Runs `first` and `second` together, `first` polled first: the driver
/// sends each request when it is first polled, so both are on their way
/// before either is answered.
async fn both<A: Future, B: Future>(first: A, second: B) -> (A::Output, B::Output) {
    use std::task::Poll;
    let mut first = std::pin::pin!(first);
    let mut second = std::pin::pin!(second);
    let (mut a, mut b) = (None, None);
    std::future::poll_fn(|cx| {
        if a.is_none()
            && let Poll::Ready(out) = first.as_mut().poll(cx)
        {
            a = Some(out);
        }
        if b.is_none()
            && let Poll::Ready(out) = second.as_mut().poll(cx)
        {
            b = Some(out);
        }
        if a.is_some() && b.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    match (a, b) {
        (Some(a), Some(b)) => (a, b),
        // Ready only once both are.
        _ => unreachable!("both futures are done"),
    }
}

/// What woke [`Session::wait_until`].
pub(super) enum Woken<T> {
    /// A message on the channel it watched (`None`: every sender is gone).
    Message(Option<T>),
    /// A notification on a channel the session listens to, with its payload.
    Notified(String),
    /// The time came.
    Due,
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| {
                Error::unavailable("cannot start the PostgreSQL driver's runtime").with_source(err)
            })?;
        let Connected {
            client,
            connection,
            location,
            tls_config,
        } = connect::connect(&runtime, target, application_name)?;
        let (notify, notifications) = tokio::sync::mpsc::unbounded_channel();
        let ended = Arc::new(std::sync::Mutex::new(None));
        let ending = ended.clone();
        let connection = runtime.spawn(async move {
            let mut connection = connection;
            // As the driver's own loop does, but notifications are kept.
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(notification))) => {
                        let _ = notify.send(notification.payload().to_owned());
                    }
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        log::info!("{}: {}", notice.severity(), notice.message());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        log::debug!("the PostgreSQL connection ended: {}", describe(&err));
                        if let Ok(mut slot) = ending.lock() {
                            *slot = Some(err);
                        }
                        break;
                    }
                    None => break,
                }
            }
        });
        let mut session = Session {
            runtime,
            client,
            connection,
            backend_pid: 0,
            location,
            tls_config,
            idle_limit: None,
            notifications,
            ended,
            cutoff: None,
            kept: None,
            ahead: std::sync::Mutex::new(String::new()),
        };
        session.configure()?;
        Ok(session)
    }

    /// The server-side settings of a lock session, and the standby check:
    /// one round trip on a server that knows every setting (PostgreSQL 14
    /// and later), else one statement at a time.
    fn configure(&mut self) -> Result<()> {
        let all = format!(
            "{}; {}; SET idle_session_timeout = 0; SET tcp_user_timeout = {}; {CHECK_SERVER}",
            BASE_SETTINGS,
            keepalive_settings(),
            TCP_USER_TIMEOUT.as_millis()
        );
        let row = match self.call(Some(ANSWER_DEADLINE), self.client.simple_query(&all)) {
            Ok(messages) => first_row(&messages).unwrap_or_default(),
            // An older server: the batch stopped at the first setting it
            // does not know, and none of it took effect.
            Err(failure) if failure.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                return self.configure_one_by_one();
            }
            Err(failure) => return Err(self.error("configuring the session", failure)),
        };
        let pid = row
            .first()
            .cloned()
            .flatten()
            .and_then(|pid| pid.parse().ok());
        let standby = row.get(1).cloned().flatten();
        self.check_server(pid, standby.as_deref() == Some("t"))
    }

    /// [`Session::configure`] on a server too old to know every setting.
    fn configure_one_by_one(&mut self) -> Result<()> {
        // The DBA's timeouts must not end a session that holds a lock; a
        // wait is bounded by lock_timeout, set per wait.
        // Names in onlyone's statements (pg_locks, pg_advisory_lock, now)
        // are the system's: never a table or function of the same name in
        // a schema of the role's search_path, temporary ones included. The
        // state table is always named with its schema.
        self.batch(BASE_SETTINGS)
            .map_err(|failure| self.error("configuring the session", failure))?;
        // The server drops a silently dead client (and its lock) after
        // KEEPALIVE_IDLE + KEEPALIVE_COUNT × KEEPALIVE_INTERVAL.
        self.batch(&keepalive_settings())
            .map_err(|failure| self.error("configuring the session", failure))?;
        // Newer settings (PostgreSQL 14 and 12): harmless to miss on an
        // older server, which cannot end an idle session anyway.
        self.set_if_known("idle_session_timeout", "0")?;
        self.set_if_known(
            "tcp_user_timeout",
            &TCP_USER_TIMEOUT.as_millis().to_string(),
        )?;
        let row = self
            .query_one(CHECK_SERVER, &[])
            .map_err(|failure| self.error("checking the server", failure))?;
        self.check_server(Some(row.get(0)), row.get::<_, bool>(1))
    }

    /// Keeps the server process's pid (`None`: the server did not say)
    /// and refuses a standby.
    fn check_server(&mut self, pid: Option<i32>, standby: bool) -> Result<()> {
        let Some(pid) = pid else {
            return Err(Error::unavailable(format!(
                "PostgreSQL at {} did not say which server process answers",
                self.location
            )));
        };
        self.backend_pid = pid;
        if standby {
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

    /// Has the server end this session once it has sat idle for `limit`
    /// (unless the server is too old to know `idle_session_timeout`), in a
    /// transaction or not: a lock this session holds, or is granted while
    /// its process is stopped (even in the middle of the transaction that
    /// records its token), is then freed. One round trip, none when the
    /// limit is already set.
    pub fn expire_when_idle(&mut self, limit: Duration) -> Result<()> {
        if self.idle_limit == Some(limit) {
            return Ok(());
        }
        let millis = limit.as_millis().to_string();
        match self.batch(&format!(
            "SET idle_session_timeout = {millis}; SET idle_in_transaction_session_timeout = {millis}"
        )) {
            Ok(()) => {}
            Err(failure) if failure.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                self.set_if_known("idle_session_timeout", &millis)?;
                self.set_if_known("idle_in_transaction_session_timeout", &millis)?;
            }
            Err(failure) => return Err(self.error("configuring the session", failure)),
        }
        self.idle_limit = Some(limit);
        Ok(())
    }

    /// Has every later statement answered by `cutoff` at the latest
    /// (`None`: each by its own deadline only).
    pub fn set_cutoff(&mut self, cutoff: Option<Instant>) {
        self.cutoff = cutoff;
    }

    /// Runs `request` with a deadline (`None`: without one), cut to the
    /// session's cutoff when it has one.
    fn call<T>(
        &self,
        deadline: Option<Duration>,
        request: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> std::result::Result<T, Failure> {
        let ahead = std::mem::take(&mut *self.ahead.lock().unwrap_or_else(|e| e.into_inner()));
        let request = async {
            if ahead.is_empty() {
                return request.await;
            }
            // Both sent before either answer is read: the driver writes
            // each request when first polled, in this order, and the
            // server runs them in that order.
            let (sent_ahead, answer) = both(self.client.batch_execute(&ahead), request).await;
            sent_ahead?;
            answer
        };
        let deadline = match (deadline, self.cutoff) {
            (deadline, None) => deadline,
            (None, Some(cutoff)) => Some(cutoff.saturating_duration_since(Instant::now())),
            (Some(deadline), Some(cutoff)) => {
                Some(deadline.min(cutoff.saturating_duration_since(Instant::now())))
            }
        };
        match deadline {
            None => self
                .runtime
                .block_on(request)
                .map_err(|err| self.failure(err)),
            Some(deadline) => match self
                .runtime
                .block_on(async { tokio::time::timeout(deadline, request).await })
            {
                Ok(answer) => answer.map_err(|err| self.failure(err)),
                Err(_) => Err(Failure::Silent(deadline)),
            },
        }
    }

    /// A statement's error; for a connection that was closed, the error
    /// that closed it, when the connection read one between statements.
    fn failure(&self, err: tokio_postgres::Error) -> Failure {
        if err.is_closed()
            && let Some(ended) = self.ended.lock().ok().and_then(|mut slot| slot.take())
        {
            return Failure::Server(ended);
        }
        Failure::Server(err)
    }

    /// Waits until `until` for a message on `messages` or a notification
    /// on a channel this session listens to, whichever comes first; the
    /// connection is served meanwhile (notifications are read only then).
    pub fn wait_until<T>(
        &mut self,
        until: Instant,
        messages: &mut UnboundedReceiver<T>,
    ) -> Woken<T> {
        use std::task::Poll;
        let notifications = &mut self.notifications;
        self.runtime.block_on(async {
            let mut due = std::pin::pin!(tokio::time::sleep_until(until.into()));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(message) = messages.poll_recv(cx) {
                    return Poll::Ready(Woken::Message(message));
                }
                // A closed channel (the connection ended) is left to the
                // next statement to find out.
                if let Poll::Ready(Some(payload)) = notifications.poll_recv(cx) {
                    return Poll::Ready(Woken::Notified(payload));
                }
                if due.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woken::Due);
                }
                Poll::Pending
            })
            .await
        })
    }

    /// Keeps every statement run by [`Session::query`] and
    /// [`Session::query_typed`] prepared, to be run again in one round
    /// trip, planned once (a shared session runs the same few statements
    /// for every name; a dedicated session does not keep them). The
    /// statements read the catalog and the rows when they run, so a
    /// change since they were prepared is seen as before.
    pub fn keep_statements(&mut self) {
        self.kept = Some(std::sync::Mutex::new(std::collections::HashMap::new()));
    }

    /// The statement kept for `sql`, if any.
    fn kept(&self, sql: &str) -> Option<Statement> {
        let kept = self.kept.as_ref()?;
        kept.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sql)
            .cloned()
    }

    /// Keeps `statement` for `sql` (while there is room), or forgets the
    /// one kept when it failed (a statement whose result would change
    /// shape is prepared again next time).
    fn keep(&self, sql: &str, statement: Option<Statement>) {
        let Some(kept) = self.kept.as_ref() else {
            return;
        };
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        match statement {
            Some(statement) if kept.len() < KEPT_STATEMENTS => {
                kept.insert(sql.to_owned(), statement);
            }
            Some(_) => {}
            None => {
                kept.remove(sql);
            }
        }
    }

    /// [`Session::query`] or [`Session::query_typed`] on a session that
    /// keeps its statements: prepared once (with `types`, when given).
    fn query_kept(
        &self,
        deadline: Duration,
        sql: &str,
        types: Option<&[Type]>,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, Failure> {
        let kept = self.kept(sql);
        let fresh = kept.is_none();
        let answer = self.call(Some(deadline), async {
            let statement = match kept {
                Some(statement) => statement,
                None => match types {
                    Some(types) => self.client.prepare_typed(sql, types).await?,
                    None => self.client.prepare(sql).await?,
                },
            };
            let rows = self.client.query(&statement, params).await?;
            Ok((statement, rows))
        });
        match answer {
            Ok((statement, rows)) => {
                if fresh {
                    self.keep(sql, Some(statement));
                }
                Ok(rows)
            }
            Err(failure) => {
                self.keep(sql, None);
                Err(failure)
            }
        }
    }

    /// Has `statements` (without parameters) sent just ahead of the next
    /// statement, in the same round trip: for statements whose answer
    /// nothing waits for, such as a setting for the statements after them.
    /// A failure of theirs is the next statement's failure.
    pub fn send_ahead(&self, statements: &str) {
        let mut ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner());
        if !ahead.is_empty() {
            ahead.push_str("; ");
        }
        ahead.push_str(statements);
    }

    /// `statements` (without parameters) and then a query, in one round
    /// trip: the query is sent before the statements are answered, and its
    /// answer is the second (it ran after them, whatever they did).
    pub fn batch_then_query_typed(
        &self,
        statements: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> (
        std::result::Result<(), Failure>,
        std::result::Result<Vec<Row>, Failure>,
    ) {
        // On a session that keeps its statements, the query's is prepared
        // first (once).
        let kept = match (&self.kept, self.kept(sql)) {
            (Some(_), None) => {
                let types: Vec<Type> = params.iter().map(|(_, ty)| ty.clone()).collect();
                match self.call(
                    Some(ANSWER_DEADLINE),
                    self.client.prepare_typed(sql, &types),
                ) {
                    Ok(statement) => {
                        self.keep(sql, Some(statement.clone()));
                        Some(statement)
                    }
                    Err(failure) => return (Err(failure), Err(Failure::Silent(Duration::ZERO))),
                }
            }
            (_, kept) => kept,
        };
        let mut answer = None;
        let done = self.call(Some(ANSWER_DEADLINE), async {
            let (done, rows) = match &kept {
                Some(statement) => {
                    let values: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|(value, _)| *value).collect();
                    both(
                        self.client.batch_execute(statements),
                        self.client.query(statement, &values),
                    )
                    .await
                }
                None => {
                    both(
                        self.client.batch_execute(statements),
                        self.client.query_typed(sql, params),
                    )
                    .await
                }
            };
            answer = Some(rows);
            done
        });
        if kept.is_some() && !matches!(answer, Some(Ok(_))) {
            self.keep(sql, None);
        }
        let rows = match answer {
            Some(rows) => rows.map_err(|err| self.failure(err)),
            // Not answered in time: as the statements.
            None => Err(match &done {
                Err(Failure::Silent(deadline)) => Failure::Silent(*deadline),
                _ => Failure::Silent(ANSWER_DEADLINE),
            }),
        };
        (done, rows)
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
        if self.kept.is_some() {
            return self.query_kept(ANSWER_DEADLINE, sql, None, params);
        }
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

    /// A query's rows, in one round trip: the parameters' types are given,
    /// so nothing is prepared first.
    pub fn query_typed(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> std::result::Result<Vec<Row>, Failure> {
        self.query_typed_within(ANSWER_DEADLINE, sql, params)
    }

    /// [`Session::query_typed`], answered within `deadline`.
    pub fn query_typed_within(
        &self,
        deadline: Duration,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> std::result::Result<Vec<Row>, Failure> {
        if self.kept.is_some() {
            let types: Vec<Type> = params.iter().map(|(_, ty)| ty.clone()).collect();
            let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(value, _)| *value).collect();
            return self.query_kept(deadline, sql, Some(&types), &values);
        }
        self.call(Some(deadline), self.client.query_typed(sql, params))
    }

    /// A query's rows, however long the server takes: for a statement
    /// that waits in a lock queue as long as the lock's holders please.
    pub fn query_waiting(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, Failure> {
        self.call(None, self.client.query(sql, params))
    }

    /// `statements` (with their values written in) sent as one simple
    /// query, in one round trip: the first row of text they return.
    pub fn simple_query_row(
        &self,
        statements: &str,
    ) -> std::result::Result<Option<Vec<Option<String>>>, Failure> {
        let messages = self.call(Some(ANSWER_DEADLINE), self.client.simple_query(statements))?;
        Ok(first_row(&messages))
    }

    /// `statements` (with their values written in) sent as one simple
    /// query: one round trip and one implicit transaction, in which the
    /// server cuts off any wait for a lock and any statement after
    /// `budget`. The first row of text the statements return, answered
    /// within `deadline`.
    pub fn query_briefly(
        &self,
        deadline: Duration,
        budget: Duration,
        statements: &str,
    ) -> std::result::Result<Option<Vec<Option<String>>>, Failure> {
        let sql = format!("{}; {statements}", cut_off_after(budget));
        let messages = self.call(Some(deadline), self.client.simple_query(&sql))?;
        Ok(first_row(&messages))
    }

    /// A query's rows, in a transaction of its own in which the server
    /// cuts off any wait for a lock and the query itself after `budget`,
    /// answered within `deadline`.
    pub fn query_bounded(
        &self,
        deadline: Duration,
        budget: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, Failure> {
        let begin = format!("BEGIN; {}", cut_off_after(budget));
        self.call(Some(deadline), async {
            self.client.batch_execute(&begin).await?;
            match self.client.query(sql, params).await {
                Ok(rows) => self.client.batch_execute("COMMIT").await.map(|()| rows),
                Err(err) => {
                    self.client.batch_execute("ROLLBACK").await?;
                    Err(err)
                }
            }
        })
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
        let rows = self
            .query_typed(
                "SELECT pg_try_advisory_lock($1), pg_backend_pid()",
                &[(&key, Type::INT8)],
            )
            .map_err(|failure| self.error("taking the lock", failure))?;
        let row = rows.first().ok_or_else(|| {
            Error::unavailable(format!(
                "PostgreSQL at {} answered no row while taking the lock",
                self.location
            ))
        })?;
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
        let rows = self
            .call(
                Some(left),
                self.client
                    .query_typed("SELECT pg_advisory_unlock($1)", &[(&key, Type::INT8)]),
            )
            .map_err(|failure| self.error("releasing the lock", failure))?;
        if !rows.first().is_some_and(|row| row.get::<_, bool>(0)) {
            log::warn!(
                "PostgreSQL at {} says advisory lock {key} was not held by this session at release",
                self.location
            );
        }
        Ok(())
    }

    /// A way to cancel, from another thread, the statement this session
    /// runs (a wait for a lock).
    pub fn canceller(&self) -> Canceller {
        Canceller {
            token: self.client.cancel_token(),
            tls_config: self.tls_config.clone(),
        }
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

/// The settings every session starts with: the DBA's timeouts must not
/// end a session that holds a lock (a wait is bounded by lock_timeout, set
/// per wait), and names in onlyone's statements (pg_locks,
/// pg_advisory_lock, now) are the system's, never a table or function of
/// the same name in a schema of the role's search_path, temporary ones
/// included (the state table is always named with its schema).
const BASE_SETTINGS: &str = "SET search_path = pg_catalog, pg_temp; \
     SET statement_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; \
     SET lock_timeout = 0";

/// Which server process answers, and whether the server is a standby.
const CHECK_SERVER: &str = "SELECT pg_backend_pid(), pg_is_in_recovery()";

/// The server drops a silently dead client (and its lock) after
/// KEEPALIVE_IDLE + KEEPALIVE_COUNT × KEEPALIVE_INTERVAL.
fn keepalive_settings() -> String {
    format!(
        "SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; SET tcp_keepalives_count = {}",
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
        KEEPALIVE_COUNT
    )
}

/// The first row of text that a simple query returned.
fn first_row(messages: &[SimpleQueryMessage]) -> Option<Vec<Option<String>>> {
    messages.iter().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(
            (0..row.len())
                .map(|column| row.get(column).map(str::to_owned))
                .collect(),
        ),
        _ => None,
    })
}

/// The settings, for the rest of a transaction, that have the server cut
/// off a wait for a lock or a statement after `budget` (at least 1 ms: 0
/// would mean never).
fn cut_off_after(budget: Duration) -> String {
    let millis = budget.as_millis().clamp(1, i32::MAX as u128);
    format!("SET LOCAL lock_timeout = '{millis}ms'; SET LOCAL statement_timeout = '{millis}ms'")
}

/// Cancels the statement of one session: the server ends a wait for a
/// lock with an error. A cancel that arrives between statements is
/// ignored by the server. The request is made as the session's connection
/// was: over TLS, with the same settings, when it was encrypted. (Sent
/// without TLS, the driver refuses it under `sslmode=require`, `verify-ca`
/// and `verify-full`, and the wait it was for went on.)
#[derive(Clone)]
pub(super) struct Canceller {
    token: tokio_postgres::CancelToken,
    tls_config: Option<Arc<ClientConfig>>,
}

impl Canceller {
    /// Sends the cancel request; failures are logged (the wait then ends at
    /// its own deadline, or when the lock is granted).
    pub fn cancel(&self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                log::debug!("cannot start a runtime to cancel a wait: {err}");
                return;
            }
        };
        let sent = runtime.block_on(async {
            let connector = Connector::new(self.tls_config.as_ref());
            tokio::time::timeout(CANCEL_DEADLINE, self.token.cancel_query(connector)).await
        });
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(err)) => log::warn!("cancelling a wait for a lock failed: {}", describe(&err)),
            Err(_) => log::warn!("cancelling a wait for a lock timed out"),
        }
    }
}
