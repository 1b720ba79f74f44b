//! The MySQL/MariaDB backend: a named lock (`GET_LOCK`) held on a dedicated
//! session, with a heartbeat, fencing tokens and a lock-delay kept in a
//! small state table. See [`MysqlBackend`] for the whole story.

mod cluster;
mod fence;
mod guard;
mod held;
mod pool;
mod session;
mod stop;
mod table;
mod target;
mod tls;

use std::fmt;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use self::held::{Keep, MysqlHeld};
use self::session::Session;
use self::target::Target;
use crate::backend::{Attempt, Backend, Guard, Holder, HolderId, Status, Stop, Wait};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::timing::{LOCK_DELAY_MARGIN, Timing};

/// What every lock name onlyone takes starts with.
const PREFIX: &str = "onlyone/";

/// The longest name `GET_LOCK` takes (MySQL 5.7 and later), in characters.
pub const MAX_LOCK_NAME: usize = 64;

/// How much longer than the heartbeat deadline the server lets a lock
/// session sit idle before it ends it.
const IDLE_MARGIN: Duration = Duration::from_secs(2);

/// The longest heartbeat interval: the server's idle limit on a lock
/// session, 2 × heartbeat + 1 s + 2 s, must fit `wait_timeout` (at most a
/// year of seconds).
const MAX_HEARTBEAT: Duration = Duration::from_secs(180 * 24 * 3600);

/// How long a waiter whose session ended pauses before it opens another.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// How to reach MySQL or MariaDB and how to hold locks there. Start from
/// [`MysqlConfig::new`], which fills in the defaults.
#[derive(Clone)]
pub struct MysqlConfig {
    /// A `mysql://user@host:port/database` URL (`mariadb://` too). The
    /// password comes from the URL, else `MYSQL_PWD`, else the `[client]`
    /// group of `~/.my.cnf` (which may also give the user); without a
    /// user, the login name. The port defaults to 3306. The database is
    /// required: the state table lives there.
    ///
    /// TLS is the `mysql` client's: `?ssl-mode=` DISABLED, PREFERRED (the
    /// default: TLS when the server offers it, its certificate not
    /// checked, plain text when it does not), REQUIRED (TLS or nothing,
    /// not checked), VERIFY_CA (the certificate chains to `ssl-ca`) or
    /// VERIFY_IDENTITY (and names the URL's host); `ssl-ca=FILE`,
    /// `ssl-cert=FILE` + `ssl-key=FILE` (a client certificate; a key that
    /// the group or others may read is refused, as libpq refuses one).
    /// `ssl_mode` etc. are the same; each comes from the URL, else from the
    /// `[client]` group of `~/.my.cnf`. MySQL 8's rules are followed for
    /// `ssl-ca`: without `ssl-mode` it implies VERIFY_CA; with an explicit
    /// REQUIRED (or PREFERRED) it checks nothing and a warning says so;
    /// VERIFY_CA and VERIFY_IDENTITY need it (no built-in CA list). An
    /// unknown value is a usage error (64); a server without TLS under
    /// REQUIRED or stricter, an untrusted certificate, a host name
    /// mismatch or an unreadable or unsafe file is 69, in one line that
    /// says which step failed.
    pub url: String,
    /// The heartbeat interval, the lock-delay, and the kill grace of the
    /// supervisor that runs the command (used here only for the
    /// lock-delay): give the supervisor the same [`Timing`].
    pub timing: Timing,
}

impl MysqlConfig {
    /// A configuration for `url` with every default.
    pub fn new(url: impl Into<String>) -> MysqlConfig {
        MysqlConfig {
            url: url.into(),
            timing: Timing::default(),
        }
    }
}

/// Never shows the password.
impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("url", &target::redact(&self.url))
            .field("timing", &self.timing)
            .finish()
    }
}

/// Locks held as MySQL/MariaDB named locks (`GET_LOCK`).
///
/// ```no_run
/// # fn main() -> Result<(), onlyone::Error> {
/// use onlyone::{Attempt, Lock, MysqlBackend, MysqlConfig};
///
/// // The password comes from MYSQL_PWD or ~/.my.cnf.
/// let backend = MysqlBackend::new(MysqlConfig::new("mysql://bot@db1/app"))?;
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
/// Lock `name` through the URL's database `db` is the named lock
/// `onlyone/<db>/<name>` when that is at most 64 characters (MySQL's
/// limit), else `onlyone/sha256/` followed by the first 24 bytes of
/// SHA-256 over the UTF-8 `<db>/<name>` in lowercase hex (63 characters)
/// ([`MysqlBackend::lock_name_for`]). Any other program that runs
/// `SELECT GET_LOCK('onlyone/<db>/<name>', 0)` on the same server excludes
/// onlyone's holders of `name` through `db` and is excluded by them. Named
/// locks belong to the whole server, the state table to one database: the
/// database in the lock name makes a name in two databases two locks with
/// two state rows, as PostgreSQL's advisory locks are per database.
///
/// Each holder has a connection of its own, never pooled, never shared,
/// never reconnected (a new session would not hold the lock). Its
/// `wait_timeout` and `interactive_timeout` are set to the heartbeat
/// deadline + 2 s, rounded up to whole seconds (5 s by default): a live
/// holder sends a heartbeat every interval, and the server ends a session
/// that falls silent that long (a frozen process, or a partition), which
/// frees the lock. The client's socket sends TCP keepalives after 5 s of
/// silence. A read-only server (`@@read_only`, `@@super_read_only`: a
/// replica) is refused, since named locks are not replicated; so is a
/// Galera node (`@@wsrep_on`), where named locks are node-local, and so
/// is a member of a MySQL Group Replication group (a group name in
/// `@@group_replication_group_name`, the plugin `ACTIVE`, and this
/// server's row in `performance_schema.replication_group_members` in any
/// state but `OFFLINE`, or no row this account can see), for the same
/// reason. These are checked when a session opens, not at every heartbeat.
///
/// Waiting ([`Backend::acquire`]) happens in the server: `GET_LOCK` with a
/// timeout, re-armed every 10 s (each round answered within its length +
/// 10 s); nothing polls. `KILL QUERY` of the waiting session ends the
/// wait with an error.
///
/// # Timing
///
/// As for PostgreSQL: every `heartbeat` (1 s) the holder checks, in one
/// query, that `IS_USED_LOCK(name)` is its own `CONNECTION_ID()` and that
/// the server is not read-only; an error, a silence past the heartbeat
/// deadline T = 2 × heartbeat + 1 s (counted from the last good
/// heartbeat's sending), or any other answer fires the
/// [`LossWatch`](crate::LossWatch), and the supervisor stops the command
/// (SIGTERM, kill grace, SIGKILL; `onlyone run` exits 74).
///
/// # The state table and the lock-delay
///
/// One row per named lock in `onlyone_locks` (InnoDB) of the URL's
/// database, created on first use:
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS onlyone_locks (
///     lock_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
///     name VARCHAR(255) NOT NULL,           -- the onlyone lock name
///     token BIGINT UNSIGNED NOT NULL,       -- last fencing token
///     state ENUM('held', 'released') NOT NULL,
///     connection_id BIGINT UNSIGNED NULL,   -- the holder's session
///     record TEXT NULL,                     -- the holder's record (JSON)
///     stop_within_ms BIGINT UNSIGNED NULL,  -- its heartbeat deadline + kill grace
///     owed_ms BIGINT UNSIGNED NULL,         -- what its successor owes
///     stopped_token BIGINT UNSIGNED NULL,   -- the last token `stop` ended
///     updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
/// ) ENGINE=InnoDB
/// ```
///
/// While holding the named lock, a new holder reads its row `FOR UPDATE`
/// and writes the next token, `state = 'held'` and its record in one
/// committed transaction, before its command starts. A clean release sets
/// `state = 'released'`, then `RELEASE_LOCK`, then closes the session. A
/// holder that finds the row still `held` (its predecessor crashed, was
/// killed, or lost its session) waits the lock-delay, with its heartbeat
/// running, before it returns: the longer of its own lock-delay and the
/// largest T + kill grace + 2 s recorded by the holders since the last
/// clean release, counted from its own acquisition, as the PostgreSQL
/// backend does.
///
/// Triggers refuse to delete a row, or to add or change one from a
/// session that does not hold its named lock (`stop`'s mark excepted); `TRUNCATE` fires
/// none, so the holder also checks its row at every heartbeat and writes
/// it back when it was deleted or altered. The triggers and the fence
/// function are read from `information_schema` before each start: any
/// other trigger on the table, or another body, is refused (77).
///
/// # Fenced writes
///
/// [`Guard::fence_sql`] is ``SELECT `db`.onlyone_fence('NAME', TOKEN)``:
/// run first inside a transaction, it raises SQLSTATE `ON001` unless TOKEN
/// is the current holder's, and share-locks the row so that the next
/// holder's token is committed, and its command started, only after the
/// transaction has ended. The next holder waits for such transactions with
/// no deadline, saying so after a second.
///
/// # Stopping a holder
///
/// [`Backend::stop_holder`] ends the holder's session (`KILL CONNECTION`)
/// only when the state row names it: `state = 'held'` and the connection
/// id that `IS_USED_LOCK` shows, checked again in the statement that marks
/// the row's token in `stopped_token`. Any other holder of the name is
/// refused. A starter ended during its lock-delay finds its token marked
/// and gives up instead of starting over. [`Backend::wait_free`] checks
/// `IS_USED_LOCK` every heartbeat interval on one session.
///
/// # Semaphores
///
/// The slots `NAME@1` … `NAME@N` of [`Lock::max`](crate::Lock::max) are N
/// named locks, tried on one session. When all are held, waiters queue in
/// the server, one session each, on the lock of `NAME@queue` (mapped as a
/// lock name). The waiter at the head of that queue waits on every slot
/// at once, one session per slot, takes the first granted and ends the
/// other waits (`KILL QUERY`): W waiters hold W + N sessions.
pub struct MysqlBackend {
    config: MysqlConfig,
    target: Target,
}

impl MysqlBackend {
    /// Validates `config` (URL, durations); connects only when a lock is
    /// used.
    ///
    /// # Errors
    ///
    /// A usage error for a malformed URL, one without a database, a zero
    /// or too long heartbeat, or a kill grace or lock-delay over 100
    /// years. The message shows the URL with its password redacted.
    pub fn new(config: MysqlConfig) -> Result<MysqlBackend> {
        let target = Target::parse(&config.url)?;
        if target.database.is_none() {
            return Err(Error::usage(format!(
                "the MySQL URL '{}' names no database: the state table onlyone_locks lives in it (mysql://USER@HOST:PORT/DATABASE)",
                target.redacted_url
            )));
        }
        if config.timing.heartbeat.is_zero() {
            return Err(Error::usage(
                "the heartbeat interval must be more than zero",
            ));
        }
        if config.timing.heartbeat > MAX_HEARTBEAT {
            return Err(Error::usage(format!(
                "the heartbeat interval of {} is too long: at most {} (the server ends a lock session idle for 2 × heartbeat + 3 s, which must fit in its wait_timeout)",
                humantime::format_duration(config.timing.heartbeat),
                humantime::format_duration(MAX_HEARTBEAT)
            )));
        }
        config.timing.check()?;
        Ok(MysqlBackend { config, target })
    }

    /// The name given to `GET_LOCK` for `name` through this backend's
    /// database: `onlyone/<database>/<name>` when that is at most 64
    /// characters, else `onlyone/sha256/` and the first 24 bytes of
    /// SHA-256 over `<database>/<name>`, in lowercase hex. For example
    /// `demo` through database `app` is `onlyone/app/demo`.
    pub fn lock_name_for(&self, name: &LockName) -> String {
        map_name(self.database(), name.as_str())
    }

    /// The URL's database (checked present by [`MysqlBackend::new`]).
    fn database(&self) -> &str {
        self.target.database.as_deref().unwrap_or_default()
    }

    /// The URL as configured, with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        self.target.redacted_url.clone()
    }

    /// The heartbeat deadline T (see [`Timing::heartbeat_deadline`]).
    pub fn heartbeat_deadline(&self) -> Duration {
        self.config.timing.heartbeat_deadline()
    }

    /// How long a session may sit idle before the server ends it.
    fn idle_limit(&self) -> Duration {
        self.heartbeat_deadline().saturating_add(IDLE_MARGIN)
    }

    /// A session for locks, with the state table ready.
    fn open(&self) -> Result<Session> {
        let mut session = Session::open(&self.target, self.idle_limit())?;
        table::ensure(&mut session)?;
        guard::ensure(&mut session)?;
        Ok(session)
    }

    /// Runs `once` again while it fails in a way that shows that its
    /// session held nothing that ran: a session that ended before it held
    /// the lock (a waiter waits on with a new session until its deadline,
    /// a single try gives up), or one that ended after it took the lock,
    /// before the command started (every starter starts over).
    fn retrying(&self, wait: Wait, once: impl Fn() -> Result<Attempt>) -> Result<Attempt> {
        loop {
            let err = match once() {
                Err(err) if err.ended_session() => err,
                done => return done,
            };
            if err.is_lost() {
                log::warn!("{err}; the command never ran: trying again with a new session");
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

    /// One attempt at `name`: waits for the lock as `wait` says, and for a
    /// lock-delay until `delay_until` at most.
    fn attempt_once(
        &self,
        name: &LockName,
        command: &[String],
        wait: Wait,
        delay_until: Option<Instant>,
    ) -> Result<Attempt> {
        let lock_name = self.lock_name_for(name);
        let mut session = self.open()?;
        let locked = session.get_lock(&lock_name, wait);
        if !locked? {
            let holder = holder(&mut session, &lock_name);
            session.close();
            return Ok(Attempt::Held(holder?));
        }
        self.hold(session, name, &lock_name, command, delay_until)
    }

    /// Turns `session`, which holds the lock, into a guard: the token is
    /// committed, the heartbeat starts, and the lock-delay is waited out
    /// if the previous holder did not release cleanly, but not past
    /// `delay_until`.
    fn hold(
        &self,
        mut session: Session,
        name: &LockName,
        lock_name: &str,
        command: &[String],
        delay_until: Option<Instant>,
    ) -> Result<Attempt> {
        let mut record = crate::record::Record::for_current_process(command, 0);
        let acquisition = table::record_acquisition(
            &mut session,
            lock_name,
            name,
            &mut record,
            self.config.timing.stop_within(),
            LOCK_DELAY_MARGIN,
        )
        .map_err(lost_before_start)?;
        let holding = table::Holding {
            lock_name: lock_name.to_owned(),
            name: name.to_string(),
            token: acquisition.token,
            connection_id: session.id(),
            record_line: record.to_line(),
            stop_within: self.config.timing.stop_within(),
            owed: acquisition.owed,
        };
        let keep = Keep {
            name: name.clone(),
            lock_name: lock_name.to_owned(),
            token: acquisition.token,
            interval: self.config.timing.heartbeat,
            deadline: self.heartbeat_deadline(),
            holding,
            fence: fence::fence_sql(self.database(), name, acquisition.token),
        };
        let held = MysqlHeld::start(session, keep, record).map_err(lost_before_start)?;
        if !acquisition.previous_was_held {
            return Ok(Attempt::Acquired(Guard::new(Box::new(held))));
        }
        let delay = acquisition.owed.max(self.config.timing.lock_delay());
        log::warn!(
            "lock '{name}': the previous holder did not release it cleanly (it crashed, was killed, or lost its database session); waiting the lock-delay of {} so that its command has time to stop",
            humantime::format_duration(delay)
        );
        let token = acquisition.token;
        let waited = held.wait_lock_delay(delay, delay_until).map_err(|err| {
            // Ended by `stop` (or a replacing start) during the delay: give
            // up, as a holder stopped while its command ran does, instead of
            // starting over as after a server restart.
            match self.was_stopped(lock_name, token) {
                Ok(true) => Error::lost(format!(
                    "lock '{name}' was stopped by `onlyone stop` or a replacing start before its command started (its acquisition with token {token} was ended during its lock-delay); the command was not run"
                )),
                _ => err,
            }
        })?;
        Ok(match waited {
            Some(held) => Attempt::Acquired(Guard::new(Box::new(held))),
            None => Attempt::Held(Holder {
                lock_delay: Some(delay),
                ..Holder::default()
            }),
        })
    }

    fn status_of(&self, session: &mut Session, name: String, lock_name: &str) -> Result<Status> {
        let row = table::row(session, lock_name)?;
        let server = session.holder(lock_name)?;
        let held = server.is_some();
        let unreleased = !held && row.as_ref().is_some_and(|row| row.held);
        Ok(Status {
            name,
            location: lock_location(&self.target.location, lock_name),
            held,
            holder: server.map(|server| holder_of(&server, row.as_ref())),
            last_token: row.map(|row| row.token),
            waiters: Vec::new(),
            // `stop` ends the holder's session at once here: no request
            // is ever pending.
            stop_requested: None,
            unreleased,
        })
    }
}

/// Never shows the password.
impl fmt::Debug for MysqlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlBackend")
            .field("config", &self.config)
            .field("location", &self.target.location)
            .finish_non_exhaustive()
    }
}

impl Backend for MysqlBackend {
    fn acquire(&self, name: &LockName, command: &[String], wait: Wait) -> Result<Attempt> {
        let until = match wait {
            Wait::No => None,
            Wait::Until(until) => until,
        };
        self.retrying(wait, || self.attempt_once(name, command, wait, until))
    }

    fn try_acquire_within(
        &self,
        name: &LockName,
        command: &[String],
        bound: Duration,
    ) -> Result<Attempt> {
        let until = Instant::now().checked_add(bound);
        self.retrying(Wait::No, || {
            self.attempt_once(name, command, Wait::No, until)
        })
    }

    fn status(&self, name: &LockName) -> Result<Status> {
        let mut session = Session::open(&self.target, self.idle_limit())?;
        let status = self.status_of(&mut session, name.to_string(), &self.lock_name_for(name));
        session.close();
        status
    }

    fn list(&self) -> Result<Vec<Status>> {
        let mut session = Session::open(&self.target, self.idle_limit())?;
        let list = table::rows(&mut session).and_then(|rows| {
            rows.into_iter()
                .map(|row| self.status_of(&mut session, row.name, &row.lock_name))
                .collect()
        });
        session.close();
        list
    }

    /// The slots of `base`, from its rows of the state table only: the
    /// pool/plain check of every acquisition asks, and [`Backend::list`]
    /// would read the server's view of every other lock too (three to
    /// five more statements for each row the table has).
    fn slots(&self, base: &LockName) -> Result<Vec<Status>> {
        let mut session = Session::open(&self.target, self.idle_limit())?;
        let slots = table::rows(&mut session).and_then(|rows| {
            rows.into_iter()
                .filter(|row| {
                    LockName::from_stored(&row.name).is_some_and(|name| name.is_slot_of(base))
                })
                .map(|row| self.status_of(&mut session, row.name, &row.lock_name))
                .collect()
        });
        session.close();
        slots
    }

    /// The slots of a semaphore: tried on one session; when all are held,
    /// waited for in the server (see `pool.rs`), never by polling.
    /// [`Wait::No`], or a deadline that has passed, tries once (and then
    /// waits out a lock-delay in full, as [`Backend::try_acquire`] does).
    fn acquire_any(&self, names: &[LockName], command: &[String], wait: Wait) -> Result<Attempt> {
        let until = match wait {
            Wait::Until(until) if wait.left() != Some(Duration::ZERO) => until,
            _ => {
                return self.retrying(Wait::No, || {
                    self.attempt_any_once(names, command, Wait::No, None)
                });
            }
        };
        self.retrying(wait, || self.attempt_any_once(names, command, wait, until))
    }

    fn try_acquire_any_within(
        &self,
        names: &[LockName],
        command: &[String],
        bound: Duration,
    ) -> Result<Attempt> {
        let until = Instant::now().checked_add(bound);
        self.retrying(Wait::No, || {
            self.attempt_any_once(names, command, Wait::No, until)
        })
    }

    /// Ends the holder's database session (`KILL CONNECTION`): its
    /// heartbeat then reports the loss, and its own supervisor stops its
    /// command (SIGTERM, kill grace, SIGKILL) wherever it runs. Only a
    /// session that the state row names as the holder is ended; any other
    /// holder of the name is refused. `signal` cannot be sent across
    /// machines and is not used.
    fn stop_holder(
        &self,
        name: &LockName,
        _signal: i32,
        expected: Option<&HolderId>,
    ) -> Result<Stop> {
        let mut session = Session::open(&self.target, self.idle_limit())?;
        let stopped = self.kill_holder(&mut session, name, expected);
        session.close();
        stopped
    }

    /// Nothing tells a bystander that a named lock was released: one
    /// session checks `IS_USED_LOCK` every heartbeat interval.
    fn wait_free(&self, name: &LockName, timeout: Option<Duration>) -> Result<bool> {
        self.watch_free(name, timeout)
    }
}

/// Who holds `lock_name`, as seen right after failing to take it.
fn holder(session: &mut Session, lock_name: &str) -> Result<Holder> {
    let row = table::row(session, lock_name)?;
    Ok(match session.holder(lock_name)? {
        Some(server) => holder_of(&server, row.as_ref()),
        None => Holder {
            detail: Some(
                "nobody holds it any more: the holder released it just after our attempt"
                    .to_owned(),
            ),
            ..Holder::default()
        },
    })
}

/// The holder as [`Holder`]: the record comes from the state row only when
/// that row names the very session that holds the lock now.
fn holder_of(server: &session::ServerHolder, row: Option<&table::Row>) -> Holder {
    let current = row.filter(|row| row.held && row.connection_id == Some(server.connection_id));
    let mut detail = server.describe();
    if current.is_none() {
        detail.push_str(
            "; not an onlyone holder: no record in the state table names this session (another program, or an onlyone holder still starting)",
        );
    }
    let record = current.and_then(|row| row.record.clone());
    Holder {
        pids: record.iter().map(|record| record.pid).collect(),
        server_pid: u32::try_from(server.connection_id).ok(),
        record,
        detail: Some(detail),
        ..Holder::default()
    }
}

/// The one mapping from a lock name (`text`) used through `database` to
/// the name given to `GET_LOCK`: `onlyone/<database>/<text>`, or, when
/// that is longer than 64 characters or has a capital letter, `onlyone/sha256/`
/// followed by the first 24 bytes of SHA-256 over the UTF-8
/// `<database>/<text>` in lowercase hex (see
/// [`MysqlBackend::lock_name_for`]). The database is part of it because
/// the state table is: one name in two databases is two locks with two
/// state rows, as PostgreSQL's advisory keys are per database. Every name
/// it gives is in lower case, because MySQL compares lock names without
/// case while the state table's rows (and MariaDB) tell `Demo` from
/// `demo`: two names that differ in case only must be two locks
/// everywhere, or their holders would share a lock but not a row.
/// Runs the driver's one-time initialisations that a connection would run
/// (mysql_common compiles its server version regexes in a `LazyLock` at
/// the first handshake), so that a fork while another thread makes its
/// first connection cannot leave one "running" in the child, whose own
/// first connection would then wait for it forever.
pub(crate) fn prepare_driver_for_fork() {
    use mysql_common::constants::{CapabilityFlags, StatusFlags};
    use mysql_common::packets::HandshakePacket;
    let handshake = HandshakePacket::new(
        10,
        &b"5.5.5-10.11.0-MariaDB"[..],
        0,
        [0; 8],
        None::<&[u8]>,
        CapabilityFlags::empty(),
        0,
        StatusFlags::empty(),
        None::<&[u8]>,
    );
    let _ = handshake.server_version_parsed();
    let _ = handshake.maria_db_server_version_parsed();
}

/// For the at-fork prepare hook: no thread inside the MySQL driver (its
/// process-wide buffer pool) until the returned guard is dropped.
pub(crate) fn hold_for_fork() -> Box<dyn std::any::Any> {
    session::hold_for_fork()
}

fn map_name(database: &str, text: &str) -> String {
    let scoped = format!("{database}/{text}");
    let plain = format!("{PREFIX}{scoped}");
    if plain.chars().count() <= MAX_LOCK_NAME && plain == plain.to_lowercase() {
        return plain;
    }
    let digest = Sha256::digest(scoped.as_bytes());
    let hex: String = digest[..24].iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}sha256/{hex}")
}

/// `mysql://user@host:port/db lock 'onlyone/db/demo'`.
fn lock_location(server: &str, lock_name: &str) -> String {
    format!("{server} lock '{lock_name}'")
}

/// A session that ended after it took the lock, before the command could
/// start, lost a lock that protected nothing yet: the starter may start
/// over.
fn lost_before_start(err: Error) -> Error {
    if err.ended_session() && !err.is_lost() {
        Error::lost(format!("lost the lock before its command started: {err}")).ending_session(true)
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_names_as_documented() {
        assert_eq!(map_name("app", "demo"), "onlyone/app/demo");
        assert_eq!(map_name("other", "demo"), "onlyone/other/demo");
        // 8 + 4 + 52 = 64 characters: the longest plain one through `app`.
        assert_eq!(
            map_name("app", &"n".repeat(52)),
            format!("onlyone/app/{}", "n".repeat(52))
        );
        // python3: 'onlyone/sha256/' + sha256(b'app/' + b'n' * 53).hexdigest()[:48]
        let mapped = map_name("app", &"n".repeat(53));
        assert_eq!(
            mapped,
            "onlyone/sha256/e0752f788364dfe2fee684e5f0adfc8769a74975e8792e51"
        );
        assert!(mapped.len() <= MAX_LOCK_NAME);
        let slot = LockName::new("demo").unwrap().slot(3);
        assert_eq!(map_name("app", slot.as_str()), "onlyone/app/demo@3");
    }

    /// MySQL compares lock names without case: names that differ in case
    /// only map to names that differ in more than case.
    #[test]
    fn names_differing_in_case_only_are_different_locks_without_case() {
        assert_eq!(map_name("app", "demo"), "onlyone/app/demo");
        for (database, text) in [("app", "Demo"), ("app", "DEMO"), ("App", "demo")] {
            let mapped = map_name(database, text);
            assert!(mapped.starts_with("onlyone/sha256/"), "{mapped}");
            assert_eq!(mapped, mapped.to_lowercase());
            assert_ne!(mapped, map_name("app", "demo"));
        }
        // python3: 'onlyone/sha256/' + sha256(b'app/Demo').hexdigest()[:48]
        assert_eq!(
            map_name("app", "Demo"),
            "onlyone/sha256/c45a867e9952f6d5166d5bf77b05df730363f311ec9aab8b"
        );
    }

    #[test]
    fn validates_the_configuration() {
        assert!(
            MysqlBackend::new(MysqlConfig::new("mysql://db1"))
                .unwrap_err()
                .is_usage()
        );
        let mut zero = MysqlConfig::new("mysql://db1/app");
        zero.timing.heartbeat = Duration::ZERO;
        assert!(MysqlBackend::new(zero).unwrap_err().is_usage());
        let mut huge = MysqlConfig::new("mysql://db1/app");
        huge.timing.heartbeat = MAX_HEARTBEAT + Duration::from_secs(1);
        assert!(MysqlBackend::new(huge).unwrap_err().is_usage());
        assert!(MysqlBackend::new(MysqlConfig::new("mysql://db1/app")).is_ok());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let backend = MysqlBackend::new(MysqlConfig::new("mysql://bot:hunter2@db1/app")).unwrap();
        let shown = format!("{backend:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(backend.redacted_url(), "mysql://bot:***@db1/app");
    }
}
