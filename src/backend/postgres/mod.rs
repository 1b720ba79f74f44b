//! The PostgreSQL backend: a session-level advisory lock held on a
//! dedicated connection, with a heartbeat, fencing tokens and a lock-delay
//! kept in a small state table. See [`PostgresBackend`] for the whole story.

mod conninfo;
mod heartbeat;
mod session;
mod state;

use std::fmt;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use self::conninfo::Target;
use self::heartbeat::{Keep, PostgresHeld};
use self::session::{Session, Wait};
use self::state::{Row, ServerView, Table};
use crate::backend::{Attempt, Backend, Guard, Holder, Round, Status, rounds};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::record::Record;
use crate::sys;

/// The versioned prefix hashed with a lock name into its advisory key.
const KEY_PREFIX: &str = "onlyone/v1/";

/// The state table used unless told otherwise.
const DEFAULT_TABLE: &str = "onlyone_locks";

/// How often a holder checks its session, unless told otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a supervisor gives a command between SIGTERM and SIGKILL,
/// unless told otherwise.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// What the heartbeat deadline allows beyond two heartbeats: one slow
/// round trip.
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// What the default lock-delay adds to heartbeat deadline + kill grace, for
/// scheduling and clock jitter.
const LOCK_DELAY_MARGIN: Duration = Duration::from_secs(2);

/// How long a waiter whose session ended pauses before it opens another.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The longest `application_name` the server keeps (NAMEDATALEN - 1).
const MAX_APPLICATION_NAME: usize = 63;

/// How to reach PostgreSQL and how to hold locks there. Start from
/// [`PostgresConfig::new`], which fills in the defaults.
#[derive(Clone)]
pub struct PostgresConfig {
    /// A `postgres://user:password@host:port/db` URL or a `key=value`
    /// conninfo string. What it leaves out comes from `PGHOST`, `PGPORT`,
    /// `PGUSER`, `PGPASSWORD`, `PGDATABASE` and the password file
    /// (`PGPASSFILE`, else `~/.pgpass`), as with libpq; without a host,
    /// the local Unix socket (`/var/run/postgresql` or `/tmp`), else
    /// `localhost`. Connections are plain TCP or Unix sockets: TLS is not
    /// supported yet, and a URL that requires it is refused.
    pub url: String,
    /// An explicit advisory key instead of the one derived from the lock
    /// name ([`PostgresBackend::key_for`]); for interoperating with other
    /// programs that already lock a fixed key.
    pub key: Option<i64>,
    /// The state table: a lowercase identifier, optionally qualified by a
    /// schema (`schema.table`). Default `onlyone_locks`.
    pub table: String,
    /// How often a holder checks its session. Default 1 s.
    pub heartbeat: Duration,
    /// How long a new holder waits before it returns when the previous
    /// holder lost the lock uncleanly. `None`: heartbeat deadline + kill
    /// grace + 2 s (10 s with the defaults). See [`PostgresBackend`].
    pub lock_delay: Option<Duration>,
    /// The grace period a supervisor gives its command between SIGTERM and
    /// SIGKILL when the lock is lost; only used for the lock-delay. Default
    /// 5 s.
    pub kill_grace: Duration,
}

impl PostgresConfig {
    /// A configuration for `url` with every default.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            key: None,
            table: DEFAULT_TABLE.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT,
            lock_delay: None,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }

    /// The heartbeat deadline T = 2 × heartbeat + 1 s (3 s by default): a
    /// holder whose heartbeat has not succeeded for this long considers
    /// its lock lost.
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat
            .saturating_mul(2)
            .saturating_add(DEADLINE_SLACK)
    }

    /// The lock-delay in effect: the configured one, else heartbeat
    /// deadline + kill grace + 2 s.
    pub fn effective_lock_delay(&self) -> Duration {
        self.lock_delay.unwrap_or_else(|| {
            self.heartbeat_deadline()
                .saturating_add(self.kill_grace)
                .saturating_add(LOCK_DELAY_MARGIN)
        })
    }
}

/// Never shows the password.
impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &conninfo::redact(&self.url))
            .field("key", &self.key)
            .field("table", &self.table)
            .field("heartbeat", &self.heartbeat)
            .field("lock_delay", &self.lock_delay)
            .field("kill_grace", &self.kill_grace)
            .finish()
    }
}

/// Locks held as PostgreSQL session-level advisory locks.
///
/// ```no_run
/// # fn main() -> Result<(), onlyone::Error> {
/// use onlyone::{Attempt, Lock, PostgresBackend, PostgresConfig};
///
/// // The password comes from PGPASSWORD or ~/.pgpass.
/// let backend = PostgresBackend::new(PostgresConfig::new("postgres://bot@db1/app"))?;
/// if let Attempt::Acquired(guard) = Lock::new("report", backend)?.try_acquire()? {
///     let watch = guard.loss_watch(); // fires if the session is lost
///     # let _ = watch;
/// }
/// # Ok(())
/// # }
/// ```
///
/// # The lock
///
/// Lock `name` is the advisory lock whose bigint key is the first 8 bytes
/// of SHA-256 over `onlyone/v1/<name>`, read big-endian
/// ([`PostgresBackend::key_for`]), taken with the single-bigint
/// `pg_try_advisory_lock(key)` / `pg_advisory_lock(key)`. `pg_locks` shows
/// it as `locktype = 'advisory'`, `classid` = the high 32 bits and `objid`
/// = the low 32 bits (both unsigned), `objsubid = 1`. Any other program
/// that runs `SELECT pg_advisory_lock(<key>)` in the same database
/// excludes onlyone and is excluded by it.
///
/// Each holder has a connection of its own, never pooled, never shared,
/// never reconnected (a new session would not hold the lock). Its
/// `application_name` is `onlyone:<name>@<host>:<pid>` (cut to 63 bytes).
/// On it, `statement_timeout`, `idle_in_transaction_session_timeout`,
/// `idle_session_timeout` and `lock_timeout` are set to 0 so that a DBA's
/// defaults cannot end the session, and no transaction stays open while
/// the lock is held. Once the lock is held, `idle_session_timeout` is set to
/// the heartbeat deadline + 2 s: a holder that stops sending heartbeats (a
/// frozen process, or a partition that a middlebox hides from TCP) has its
/// session ended by the server, which frees the lock; a live holder is never
/// idle that long. A standby (`pg_is_in_recovery()`) is refused: advisory
/// locks are not replicated, so a lock taken there excludes nobody. A
/// session whose server process changes between statements (a
/// transaction-mode pooler such as PgBouncer) is refused too.
///
/// Waiting ([`Backend::acquire`]) happens in the server's lock queue
/// (`SET lock_timeout`, then `pg_advisory_lock`): the server wakes the
/// waiter the moment the holder lets go; nothing polls.
///
/// # Timing
///
/// - **Heartbeat.** Every `heartbeat` (1 s) the holder's thread checks, in
///   one query, that the session's `pg_backend_pid()` is unchanged, that
///   the server is not in recovery, and that `pg_locks` still shows the
///   lock granted to the session. Any error, or an answer that is not a
///   clear yes, fires the [`LossWatch`](crate::LossWatch) with the reason.
/// - **Heartbeat deadline T = 2 × heartbeat + 1 s (3 s).** The loss
///   fires when no heartbeat has been answered for T: the wait for each
///   answer is cut off when T has passed since the last good heartbeat was
///   sent (its answer proves the lock was held only after that), so a
///   query that hangs on a frozen network is noticed too.
/// - **Server-side bound R = 11 s.** The session sets
///   `tcp_keepalives_idle = 5`, `tcp_keepalives_interval = 2`,
///   `tcp_keepalives_count = 3` and `tcp_user_timeout = 10000` (ms). When
///   the client falls silent, the server's kernel probes it after 5 s and
///   then every 2 s, and gives up at the first probe once 10 s have passed
///   without an answer (Linux; without `tcp_user_timeout`, after 3
///   unanswered probes): at 5 + 3 × 2 = 11 s either way. A reply the
///   server sends that stays unacknowledged ends the connection after
///   10 s. The server then ends the session, which frees the lock. The
///   client's last packet is at most one heartbeat old, so the lock is
///   free at most R + heartbeat ≈ 12 s after its holder dies silently.
///   The client sets the same keepalives and TCP user timeout on its side.
/// - **Other deadlines.** Connecting (TCP, startup, authentication) may
///   take 10 s (or the URL's `connect_timeout`), any other statement 10 s
///   beyond the time it is meant to wait for the lock, a clean release
///   max(T, 5 s). Past them the operation fails, never hangs.
/// - **Lock-delay.** When a new holder finds that the previous holder did
///   not release cleanly (crash, kill, partition, terminated session), it
///   waits the lock-delay before it returns, while its own heartbeat runs.
///   The old holder learns of its loss within T and its supervisor stops
///   its command within the kill grace, so the delay must satisfy
///   `lock_delay > T + kill_grace` — the *previous* holder's T and kill
///   grace, which it records in the state row: the new holder waits the
///   longer of its own lock-delay and that record + 2 s. The default is
///   T + kill grace + 2 s = 10 s. A shorter configured delay is accepted
///   with a warning. A clean release needs no delay.
///
/// # The state table
///
/// One row per lock name, created on first use with
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS onlyone_locks (
///     name        text PRIMARY KEY,      -- the lock name
///     key         bigint NOT NULL,       -- its advisory key
///     token       bigint NOT NULL CHECK (token > 0),  -- last fencing token
///     state       text NOT NULL CHECK (state IN ('held', 'released')),
///     backend_pid integer,               -- the holder's server process
///     pid         integer,               -- the holder's process
///     host        text,
///     start_time  bigint,                -- clock ticks since boot (Linux)
///     boot_id     text,
///     user_name   text,
///     uid         bigint,
///     command     text[],
///     acquired_at timestamptz,
///     stop_within_ms bigint,             -- the holder's heartbeat deadline + kill grace
///     updated_at  timestamptz NOT NULL DEFAULT now()
/// )
/// ```
///
/// While holding the advisory lock, a new holder runs one autocommitted
/// `INSERT … ON CONFLICT (name) DO UPDATE SET token = token + 1, state =
/// 'held', …`, which gives it the fencing token (strictly increasing per
/// name, across holders and restarts, as long as the row is kept) and
/// tells it whether the previous state was still `held` (an unclean
/// loss). A clean release sets `state = 'released'`, then unlocks, then
/// closes the session. Without the privilege to create the table, the
/// error message carries the statement to have a privileged role run.
pub struct PostgresBackend {
    config: PostgresConfig,
    target: Target,
    table: Table,
}

impl PostgresBackend {
    /// Validates `config` (URL, table name, durations); connects only when
    /// a lock is used.
    ///
    /// # Errors
    ///
    /// A usage error for a malformed URL (or one that requires TLS), an
    /// invalid table name or a zero heartbeat. The message shows the URL
    /// with its password redacted.
    pub fn new(config: PostgresConfig) -> Result<PostgresBackend> {
        let target = Target::parse(&config.url)?;
        let table = Table::parse(&config.table)?;
        if config.heartbeat.is_zero() {
            return Err(Error::usage(
                "the heartbeat interval must be more than zero",
            ));
        }
        let floor = config
            .heartbeat_deadline()
            .saturating_add(config.kill_grace);
        if let Some(delay) = config.lock_delay
            && delay <= floor
        {
            log::warn!(
                "the lock-delay of {} is not more than the heartbeat deadline + kill grace ({}): after an unclean loss, a new holder may start before the old one's command is stopped",
                humantime::format_duration(delay),
                humantime::format_duration(floor)
            );
        }
        Ok(PostgresBackend {
            config,
            target,
            table,
        })
    }

    /// The advisory key of `name`: the first 8 bytes of SHA-256 over the
    /// UTF-8 string `onlyone/v1/<name>`, read as a big-endian `i64`. For
    /// example `demo` is `2573204625638217557`.
    pub fn key_for(name: &LockName) -> i64 {
        let digest = Sha256::digest(format!("{KEY_PREFIX}{name}").as_bytes());
        let mut first = [0; 8];
        first.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(first)
    }

    /// The key this backend locks for `name`: the configured one, else
    /// [`PostgresBackend::key_for`].
    pub fn key(&self, name: &LockName) -> i64 {
        self.config
            .key
            .unwrap_or_else(|| PostgresBackend::key_for(name))
    }

    /// The URL as configured, with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        self.target.redacted_url.clone()
    }

    /// The heartbeat deadline T (see [`PostgresConfig::heartbeat_deadline`]).
    pub fn heartbeat_deadline(&self) -> Duration {
        self.config.heartbeat_deadline()
    }

    /// The lock-delay in effect (see
    /// [`PostgresConfig::effective_lock_delay`]).
    pub fn lock_delay(&self) -> Duration {
        self.config.effective_lock_delay()
    }

    /// How long this holder may take to stop its command once it has lost
    /// the lock: heartbeat deadline + kill grace. Recorded for the next
    /// holder's lock-delay.
    fn stop_within(&self) -> Duration {
        self.heartbeat_deadline()
            .saturating_add(self.config.kill_grace)
    }

    /// `postgres://host:port/db key K (classid C, objid O)`.
    fn location(&self, key: i64) -> String {
        let (classid, objid) = key_parts(key);
        format!(
            "{} key {key} (classid {classid}, objid {objid})",
            self.target.location
        )
    }

    /// Takes the lock as `wait` says. A waiter whose session ends before it
    /// holds the lock (terminated, or the connection broke) held nothing,
    /// so it waits on with a new session; a holder never reconnects.
    fn attempt(&self, name: &LockName, command: &[String], wait: Wait) -> Result<Attempt> {
        loop {
            let err = match self.attempt_once(name, command, wait) {
                Err(err) if err.ended_session() => err,
                done => return done,
            };
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

    fn attempt_once(&self, name: &LockName, command: &[String], wait: Wait) -> Result<Attempt> {
        let key = self.key(name);
        let mut session = Session::open(&self.target, &application_name(name.as_str()))?;
        self.table.ensure(&mut session)?;
        if !session.lock(key, wait)? {
            let holder = self.holder(&mut session, name, key);
            session.close();
            return Ok(Attempt::Held(holder?));
        }
        let mut record = Record::for_current_process(command, 0);
        let acquisition =
            self.table
                .record_acquisition(&mut session, name, key, &record, self.stop_within())?;
        record.token = acquisition.token;
        let keep = Keep {
            name: name.clone(),
            key,
            token: acquisition.token,
            table: self.table.clone(),
            interval: self.config.heartbeat,
            deadline: self.heartbeat_deadline(),
        };
        let mut held = PostgresHeld::start(session, keep, record)?;
        if acquisition.previous_was_held {
            // The previous holder's own deadline and grace are what bound
            // how long its command may still run: wait out the longer.
            let delay = acquisition
                .previous_stop_within
                .map_or(Duration::ZERO, |stop| {
                    stop.saturating_add(LOCK_DELAY_MARGIN)
                })
                .max(self.lock_delay());
            log::warn!(
                "lock {name}: the previous holder did not release it cleanly (it crashed, was killed, or lost its database session); waiting the lock-delay of {} so that its command has time to stop",
                humantime::format_duration(delay)
            );
            held = held.wait_lock_delay(delay)?;
        }
        Ok(Attempt::Acquired(Guard::new(Box::new(held))))
    }

    /// Who holds `name`, as seen right after failing to take it.
    fn holder(&self, session: &mut Session, name: &LockName, key: i64) -> Result<Holder> {
        let row = self.table.row(session, name.as_str())?;
        let view = ServerView::read(session, key)?;
        Ok(view.holder(row.as_ref()))
    }

    fn status_of(
        &self,
        session: &mut Session,
        name: String,
        key: i64,
        row: Option<Row>,
    ) -> Result<Status> {
        let view = ServerView::read(session, key)?;
        let held = view.holder.is_some();
        Ok(Status {
            name,
            location: self.location(key),
            held,
            holder: held.then(|| view.holder(row.as_ref())),
            last_token: row.map(|row| row.token),
            waiters: view.waiter_lines(),
        })
    }
}

/// Never shows the password.
impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("config", &self.config)
            .field("location", &self.target.location)
            .finish_non_exhaustive()
    }
}

impl Backend for PostgresBackend {
    fn try_acquire(&self, name: &LockName, command: &[String]) -> Result<Attempt> {
        self.attempt(name, command, Wait::No)
    }

    fn acquire(
        &self,
        name: &LockName,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<Attempt> {
        // A timeout too far away to represent is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.attempt(name, command, Wait::Until(deadline))
    }

    fn status(&self, name: &LockName) -> Result<Status> {
        let mut session = Session::open(&self.target, &application_name("status"))?;
        let status = self
            .table
            .row(&mut session, name.as_str())
            .and_then(|row| self.status_of(&mut session, name.to_string(), self.key(name), row));
        session.close();
        status
    }

    fn list(&self) -> Result<Vec<Status>> {
        let mut session = Session::open(&self.target, &application_name("list"))?;
        let list = self.table.rows(&mut session).and_then(|rows| {
            rows.into_iter()
                .map(|row| {
                    let (name, key) = (row.name.clone(), row.key);
                    self.status_of(&mut session, name, key, Some(row))
                })
                .collect()
        });
        session.close();
        list
    }

    /// Ends the holder's database session (`pg_terminate_backend`): its
    /// heartbeat then reports the loss, and its own supervisor stops its
    /// command (SIGTERM, kill grace, SIGKILL) wherever it runs. `signal`
    /// cannot be sent across machines and is not used.
    fn stop_holder(&self, name: &LockName, _signal: i32) -> Result<bool> {
        let key = self.key(name);
        let mut session = Session::open(&self.target, &application_name("stop"))?;
        let stopped = terminate_holder(&mut session, key);
        session.close();
        stopped
    }

    /// Nothing tells a bystander that an advisory lock was released, and
    /// taking the lock (even shared) to find out would make a real starter
    /// fail: one session checks `pg_locks` every heartbeat interval.
    fn wait_free(&self, name: &LockName, timeout: Option<Duration>) -> Result<bool> {
        let key = self.key(name);
        let mut session = Session::open(&self.target, &application_name("wait"))?;
        let interval = self.config.heartbeat;
        let free = rounds(
            timeout,
            || (),
            |_, left| std::thread::sleep(left.min(interval)),
            || {
                Ok(match ServerView::read(&mut session, key)?.holder {
                    Some(_) => Round::Pending(()),
                    None => Round::Done(()),
                })
            },
        );
        session.close();
        Ok(free?.is_ok())
    }
}

/// Ends the session that holds `key`; false when none does.
fn terminate_holder(session: &mut Session, key: i64) -> Result<bool> {
    let Some(holder) = ServerView::read(session, key)?.holder else {
        return Ok(false);
    };
    let row = session
        .query_one("SELECT pg_terminate_backend($1)", &[&holder.pid])
        .map_err(|failure| session.error("ending the holder's session", failure))?;
    if row.get::<_, bool>(0) {
        Ok(true)
    } else {
        Err(Error::unavailable(format!(
            "the PostgreSQL server did not end the holder's session (backend pid {})",
            holder.pid
        )))
    }
}

/// `(classid, objid)` of a bigint advisory key as `pg_locks` shows them:
/// the high and the low 32 bits, both unsigned.
fn key_parts(key: i64) -> (u32, u32) {
    let bits = key as u64;
    ((bits >> 32) as u32, bits as u32)
}

/// `onlyone:<label>@<host>:<pid>`, cut to what the server keeps; the pid is
/// kept whole.
fn application_name(label: &str) -> String {
    let suffix = format!(":{}", std::process::id());
    let head = format!("onlyone:{label}@{}", sys::hostname());
    let mut end = MAX_APPLICATION_NAME
        .saturating_sub(suffix.len())
        .min(head.len());
    while !head.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &head[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_the_documented_key() {
        // python3: struct.unpack('>q', sha256(b'onlyone/v1/demo').digest()[:8])
        let demo = LockName::new("demo").unwrap();
        assert_eq!(PostgresBackend::key_for(&demo), 2573204625638217557);
        assert_eq!(key_parts(2573204625638217557), (599120889, 1032771413));
        assert_eq!(key_parts(-5), (4294967295, 4294967291));
    }

    #[test]
    fn application_names_fit_and_keep_the_pid() {
        let name = application_name(&"n".repeat(128));
        assert!(name.len() <= MAX_APPLICATION_NAME, "{name}");
        assert!(name.ends_with(&format!(":{}", std::process::id())));
        assert!(application_name("demo").starts_with("onlyone:demo@"));
    }

    #[test]
    fn default_lock_delay_exceeds_deadline_plus_grace() {
        let config = PostgresConfig::new("postgres://db1/app");
        assert_eq!(config.heartbeat_deadline(), Duration::from_secs(3));
        assert_eq!(config.effective_lock_delay(), Duration::from_secs(10));
        assert!(config.effective_lock_delay() > config.heartbeat_deadline() + config.kill_grace);
    }

    #[test]
    fn validates_the_configuration() {
        let bad_table = PostgresConfig {
            table: "Robert'); DROP TABLE students;--".into(),
            ..PostgresConfig::new("postgres://db1/app")
        };
        assert!(PostgresBackend::new(bad_table).unwrap_err().is_usage());
        let qualified = PostgresConfig {
            table: "ops.onlyone_locks".into(),
            ..PostgresConfig::new("postgres://db1/app")
        };
        assert!(PostgresBackend::new(qualified).is_ok());
        let zero = PostgresConfig {
            heartbeat: Duration::ZERO,
            ..PostgresConfig::new("postgres://db1/app")
        };
        assert!(PostgresBackend::new(zero).unwrap_err().is_usage());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let backend =
            PostgresBackend::new(PostgresConfig::new("postgres://bot:hunter2@db1/app")).unwrap();
        let shown = format!("{backend:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(backend.redacted_url(), "postgres://bot:***@db1/app");
    }
}
