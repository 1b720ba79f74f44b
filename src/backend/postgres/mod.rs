//! The PostgreSQL backend: a session-level advisory lock held on a
//! dedicated connection, with a heartbeat, fencing tokens and a lock-delay
//! kept in a small state table. See [`PostgresBackend`] for the whole story.

mod acquire;
mod cancel;
mod connect;
mod conninfo;
mod failure;
mod fence;
mod heartbeat;
mod params;
mod pgpass;
mod pool;
mod redact;
mod server_view;
mod service;
mod session;
mod shared;
mod state;
mod stop;
mod table;
mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use self::cancel::Cancel;
use self::conninfo::Target;
pub use self::fence::STALE_TOKEN_SQLSTATE;
use self::server_view::ServerView;
use self::session::Session;
use self::state::Row;
use self::table::Table;
use crate::backend::wait::{Round, rounds};
use crate::backend::{Attempt, Backend, HolderId, Status, Stop, Wait};
use crate::error::{Error, Result};
use crate::name::LockName;
use crate::sys;
use crate::timing::{LOCK_DELAY_MARGIN, Timing};

/// The versioned prefix hashed with a lock name into its advisory key.
const KEY_PREFIX: &str = "onlyone/v1/";

/// The state table used unless told otherwise: always named with its
/// schema, so that every role finds the same one whatever its search_path.
const DEFAULT_TABLE: &str = "public.onlyone_locks";

/// The longest heartbeat interval: the server's idle limit on a lock
/// session, 2 × heartbeat + 1 s + 2 s, must fit `idle_session_timeout`
/// (an int of milliseconds, about 24.8 days).
const MAX_HEARTBEAT: Duration = Duration::from_secs(12 * 24 * 3600);

/// How long a waiter whose session ended pauses before it opens another.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The longest `application_name` the server keeps (NAMEDATALEN - 1).
const MAX_APPLICATION_NAME: usize = 63;

/// How to reach PostgreSQL and how to hold locks there. Start from
/// [`PostgresConfig::new`], which fills in the defaults.
#[derive(Clone)]
pub struct PostgresConfig {
    /// A `postgres://user:password@host:port/db` URL or a `key=value`
    /// conninfo string, read as libpq reads it. What it leaves out comes
    /// from the service file group that `service=` or `PGSERVICE` names,
    /// then from `PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
    /// `PGDATABASE`, `PGOPTIONS`, `PGCONNECT_TIMEOUT`, `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLCRL`, `PGSSLSNI`,
    /// `PGTARGETSESSIONATTRS`, `PGLOADBALANCEHOSTS`, `PGCHANNELBINDING`,
    /// then the password file (`passfile`, `PGPASSFILE`, else
    /// `~/.pgpass`); without a host, the local Unix socket
    /// (`/var/run/postgresql` or `/tmp`), else `localhost`. TLS follows
    /// libpq's `sslmode` (default `prefer`: encrypted when the server
    /// offers it). Several hosts are tried in turn. `PGAPPNAME` and
    /// `application_name` are not used: the session is named by onlyone.
    pub url: String,
    /// An explicit advisory key instead of the one derived from the lock
    /// name ([`PostgresBackend::key_for`]); for interoperating with other
    /// programs that already lock a fixed key. The state row belongs to the
    /// key: every lock name that takes it shares one row. It names one
    /// lock, so it cannot serve the slots of a semaphore.
    pub key: Option<i64>,
    /// The state table: a lowercase identifier, optionally qualified by a
    /// schema (`schema.table`) other than a system one (`pg_*`: `pg_temp`
    /// would give each session a table of its own, gone with it); without
    /// a schema it is in `public` (never
    /// looked up through the role's `search_path`). Default
    /// `public.onlyone_locks`. Every holder of one advisory key must use
    /// the same table: a starter that finds the key recorded in another
    /// state table of the database refuses to start.
    pub table: String,
    /// The heartbeat interval, the lock-delay, and the kill grace of the
    /// supervisor that runs the command (used here only for the
    /// lock-delay): give the supervisor the same [`Timing`]. See
    /// [`PostgresBackend`].
    pub timing: Timing,
}

impl PostgresConfig {
    /// A configuration for `url` with every default.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            key: None,
            table: DEFAULT_TABLE.to_owned(),
            timing: Timing::default(),
        }
    }
}

/// Never shows the password.
impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &conninfo::redact(&self.url))
            .field("key", &self.key)
            .field("table", &self.table)
            .field("timing", &self.timing)
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
/// waiter the moment the holder lets go; nothing polls. Every session sets
/// `search_path = pg_catalog, pg_temp`, so that the system's functions and
/// views are the ones used.
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
///   `lock_delay > T + kill_grace` — the *previous* holders' T and kill
///   grace, which each records in the state row. Until a holder releases
///   cleanly, the row carries the largest T + kill grace + 2 s of every
///   holder since the last clean release (`owed_ms`): a holder lost during
///   its own delay does not shorten the wait for an earlier one's command.
///   The new holder waits the longer of its own lock-delay and that bound,
///   counted from its own acquisition (it compares no clocks: it may wait
///   longer than needed, never shorter). The default is
///   T + kill grace + 2 s = 10 s. A configured delay is a floor: a shorter
///   one does not shorten the recorded bounds (only a row written by an
///   onlyone that did not record them, whose bound is taken as 0 + 2 s,
///   depends on it). A clean release needs no delay. A timeout given to
///   [`Backend::acquire`] bounds the delay too: at the timeout the lock is
///   given up, the row left 'held', and [`Attempt::Held`] has
///   [`Holder::lock_delay`](crate::Holder) set. A starter whose session
///   ends after it took the lock, before its command ran, starts over.
///
/// # The state table
///
/// One row per advisory key, whatever lock name (or explicit key) took it,
/// in `public.onlyone_locks` unless told otherwise. The table is always
/// named with its schema (`public` when none is given), never looked up
/// through the role's `search_path`, so that every role finds the same
/// one. Created on first use with
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS public.onlyone_locks (
///     key         bigint PRIMARY KEY,    -- the advisory key
///     name        text NOT NULL,         -- the lock name that took it last
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
///     owed_ms     bigint,                -- what its successor owes (see Lock-delay)
///     stopped_token bigint,              -- the last token `stop` asked to stop, or ended
///     updated_at  timestamptz NOT NULL DEFAULT now()
/// );
/// COMMENT ON TABLE public.onlyone_locks IS 'onlyone state table';
/// ```
///
/// and guarded by two triggers calling `public.onlyone_state_guard()`:
/// `onlyone_guard_rows` (BEFORE UPDATE OR DELETE, per row) and
/// `onlyone_guard_truncate` (BEFORE TRUNCATE). They refuse (SQLSTATE
/// 23001) every `DELETE` and `TRUNCATE`, a row's key changed or its token
/// moved back, and any other change to a row from a session that does not
/// hold the row's advisory key, but `stop`'s mark. Without its row, or
/// with a row marked `released` by someone else, the next holder would
/// start at once beside a command that may still run. A function of the
/// guard's name is used only if it is the one onlyone creates (its body,
/// plpgsql, SECURITY INVOKER, `search_path` pinned) and is owned by the
/// table's owner or a superuser: one planted by another role that may
/// create in the schema would run as every holder, and is refused
/// (unsafe), never replaced. The holder also
/// checks its row at every heartbeat and writes it back if it was changed
/// past the triggers; when it cannot (a dropped table), it reports the
/// lock lost but keeps it until the guard is dropped, once its command
/// has stopped. The server cuts that check off after half a heartbeat
/// interval (a lock on the table): it is then skipped for that beat, not
/// a loss.
///
/// While holding the advisory lock, a new holder runs one autocommitted
/// `INSERT … ON CONFLICT (key) DO UPDATE SET token = token + 1, state =
/// 'held', …`, which gives it the fencing token (strictly increasing per
/// key, across holders and restarts, as long as the row is kept) and
/// tells it whether the previous state was still `held` (an unclean
/// loss). A clean release sets `state = 'released'`, then unlocks, then
/// closes the session. Without the privilege to create the table, the
/// error message carries the statement to have a privileged role run.
///
/// The comment marks the table: before recording, a holder looks for the
/// other marked tables of the database, and refuses (unsafe) when one of
/// them has a row for its key, or cannot be read. A table of the older
/// shape (one row per lock name) is migrated on first use, in one
/// transaction; two rows for one key are refused, and a role that may not
/// alter the table gets the statements to have its owner run. A migration
/// waits for its lock on the table at most 2 s (or the timeout), then
/// fails naming the sessions that hold the table.
///
/// # Stopping a holder
///
/// [`Backend::stop_holder`] first asks the holder (the handoff): the state
/// row must name it (`state = 'held'` and the `backend_pid` of the session
/// that `pg_locks` shows holding the key, checked again in the statement),
/// which then marks the holder's token in `stopped_token` and announces
/// `TOKEN HOST:PID` with `pg_notify` on the channel `onlyone_stop_KEY`.
/// The holder's session listens there and its heartbeat reads the mark
/// too; the holder reports the request on its
/// [`LossWatch`](crate::LossWatch) ([`LossWatch::stop_requested`](crate::LossWatch::stop_requested)),
/// its supervisor stops the command and the guard releases cleanly, so the
/// next holder needs no lock-delay. [`Stop::Requested`] is returned.
/// With SIGKILL as the signal (what `stop` and `--replace` send to a
/// holder that did not answer in time), the holder's session is ended
/// instead, under the same checks; any other holder of the key (another
/// program, a psql session) is refused, and left alone. The same statement
/// marks the holder's token in `stopped_token`: a starter ended during its
/// lock-delay finds it when it comes back and gives up with a lost-lock
/// error ("stopped by `onlyone stop` or a replacing start before its command
/// started") instead of starting over.
///
/// # Semaphores
///
/// The slots `NAME@1` … `NAME@N` of [`Lock::max`](crate::Lock::max) are N
/// advisory locks, tried on one session. When all are held, waiters queue
/// in the server, one session each, on the key of `NAME@queue` (derived
/// as a lock name's; `@` never appears in a lock name). The waiter at the
/// head of that queue waits on every slot at once, one session per slot,
/// takes the first granted and cancels the other waits: W waiters hold
/// W + N sessions, opened once. An explicit key cannot serve slots.
pub struct PostgresBackend {
    config: PostgresConfig,
    target: Target,
    table: Table,
    /// The shared sessions, when asked for
    /// ([`PostgresBackend::share_sessions`]).
    shared: Option<Arc<shared::Pool>>,
}

impl PostgresBackend {
    /// Validates `config` (URL, table name, durations); connects only when
    /// a lock is used.
    ///
    /// # Errors
    ///
    /// A usage error for a malformed URL (an unknown option, a bad
    /// `sslmode`, a service that no service file defines), an invalid
    /// table name, a zero heartbeat, or a kill grace or lock-delay over
    /// 100 years. The message shows the URL
    /// with its password redacted.
    pub fn new(config: PostgresConfig) -> Result<PostgresBackend> {
        let target = Target::parse(&config.url)?;
        let table = Table::parse(&config.table)?;
        if config.timing.heartbeat.is_zero() {
            return Err(Error::usage(
                "the heartbeat interval must be more than zero",
            ));
        }
        if config.timing.heartbeat > MAX_HEARTBEAT {
            return Err(Error::usage(format!(
                "the heartbeat interval of {} is too long: at most {} (the server ends a lock session idle for 2 × heartbeat + 3 s, which must fit in its idle_session_timeout)",
                humantime::format_duration(config.timing.heartbeat),
                humantime::format_duration(MAX_HEARTBEAT)
            )));
        }
        config.timing.check()?;
        let floor = config.timing.stop_within();
        if let Some(delay) = config.timing.lock_delay
            && delay <= floor
        {
            // Harmless since each holder records its own bound, which its
            // successors wait whatever their own delay.
            log::debug!(
                "the lock-delay of {} is not more than this holder's heartbeat deadline + kill grace ({}); its successors wait the recorded bound",
                humantime::format_duration(delay),
                humantime::format_duration(floor)
            );
        }
        Ok(PostgresBackend {
            config,
            target,
            table,
            shared: None,
        })
    }

    /// Holds the plain locks this backend takes on at most `max` shared
    /// sessions (1 to 8), a thread each, instead of a session and a thread
    /// per lock: for a process that holds many names at once through the
    /// library. Off unless asked for.
    ///
    /// Each session holds any number of advisory keys; one heartbeat per
    /// session checks them all (`pg_locks` for the session) and every
    /// name's row, with the same deadline T. **The trade: a session lost
    /// (a failed or late heartbeat, a terminated backend, a standby, a
    /// stopped process) loses every name on it at once**, each guard's
    /// [`LossWatch`](crate::LossWatch) firing. `stop` of a name on a
    /// shared session asks its holder first (as `stop` without `KILL`
    /// always does) and ends the session only if the key is still held
    /// after the holder's T + kill grace.
    ///
    /// A name is taken on a shared session only by a try, or by the
    /// first try of a wait; a wait in the server's lock queue blocks its
    /// session, so it waits, and then holds, on a dedicated session as
    /// without sharing. So does a name whose previous holder's fenced
    /// transactions still run (the token's transaction waits for them with
    /// no deadline), and every slot of a semaphore ([`Lock::max`](crate::Lock::max)).
    /// A second acquisition of a name this process holds on a shared
    /// session is refused as held (or waits), never taken again on the
    /// same session (advisory locks are re-entrant per session). A child
    /// made by `fork()` never uses its parent's shared sessions.
    ///
    /// # Errors
    ///
    /// A usage error for `max` of 0 or more than 8.
    pub fn share_sessions(mut self, max: usize) -> Result<PostgresBackend> {
        if !(1..=shared::MAX_SHARED_SESSIONS).contains(&max) {
            return Err(Error::usage(format!(
                "shared sessions: from 1 to {}, not {max}",
                shared::MAX_SHARED_SESSIONS
            )));
        }
        self.shared = Some(Arc::new(shared::Pool::new(max)));
        Ok(self)
    }

    /// How many shared sessions are open now (0 without sharing).
    pub fn shared_sessions(&self) -> usize {
        self.shared.as_ref().map_or(0, |pool| pool.sessions())
    }

    /// The advisory key of `name`: the first 8 bytes of SHA-256 over the
    /// UTF-8 string `onlyone/v1/<name>`, read as a big-endian `i64`. For
    /// example `demo` is `2573204625638217557`.
    pub fn key_for(name: &LockName) -> i64 {
        derive_key(name.as_str())
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

    /// The heartbeat deadline T (see [`Timing::heartbeat_deadline`]).
    pub fn heartbeat_deadline(&self) -> Duration {
        self.config.timing.heartbeat_deadline()
    }

    /// The lock-delay in effect (see [`Timing::lock_delay`]).
    pub fn lock_delay(&self) -> Duration {
        self.config.timing.lock_delay()
    }

    /// How long this holder may take to stop its command once it has lost
    /// the lock: heartbeat deadline + kill grace. Recorded for the next
    /// holder's lock-delay.
    fn stop_within(&self) -> Duration {
        self.config.timing.stop_within()
    }

    /// Slots need a key each: one explicit key cannot serve them.
    fn refuse_explicit_key_for_slots(&self) -> Result<()> {
        match self.config.key {
            Some(_) => Err(Error::usage(
                "an explicit advisory key names one lock; it cannot be shared by the slots of a semaphore",
            )),
            None => Ok(()),
        }
    }

    /// `postgres://host:port/db key K (classid C, objid O)`.
    fn location(&self, key: i64) -> String {
        key_location(&self.target.location, key)
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
        let stop_requested = row.as_ref().and_then(|row| {
            let named = view
                .holder
                .as_ref()
                .is_some_and(|server| row.names_holder(server.pid));
            row.stop_pending().filter(|_| named)
        });
        let unreleased = !held && row.as_ref().is_some_and(|row| row.state == "held");
        Ok(Status {
            name,
            location: self.location(key),
            held,
            holder: held.then(|| view.holder(row.as_ref())),
            last_token: row.map(|row| row.token),
            waiters: view.waiter_lines(),
            stop_requested,
            unreleased,
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
    fn acquire(&self, name: &LockName, command: &[String], wait: Wait) -> Result<Attempt> {
        let until = match wait {
            Wait::No => None,
            Wait::Until(until) => until,
        };
        self.retrying(wait, |lost| {
            self.attempt_once(name, command, wait, until, lost)
        })
    }

    fn try_acquire_within(
        &self,
        name: &LockName,
        command: &[String],
        bound: Duration,
    ) -> Result<Attempt> {
        let until = Instant::now().checked_add(bound);
        self.retrying(Wait::No, |lost| {
            self.attempt_once(name, command, Wait::No, until, lost)
        })
    }

    /// The slots of a semaphore: tried on one session; when all are held,
    /// waited for in the server's lock queues (see `pool.rs`), never by
    /// polling. [`Wait::No`], or a deadline that has passed, tries once
    /// (and then waits out a lock-delay in full, as
    /// [`Backend::try_acquire`] does).
    fn acquire_any(&self, names: &[LockName], command: &[String], wait: Wait) -> Result<Attempt> {
        self.refuse_explicit_key_for_slots()?;
        let until = match wait {
            Wait::Until(until) if wait.left() != Some(Duration::ZERO) => until,
            _ => {
                return self.retrying(Wait::No, |lost| {
                    self.attempt_any_once(names, command, Wait::No, None, lost)
                });
            }
        };
        self.retrying(wait, |lost| {
            self.attempt_any_once(names, command, wait, until, lost)
        })
    }

    fn try_acquire_any_within(
        &self,
        names: &[LockName],
        command: &[String],
        bound: Duration,
    ) -> Result<Attempt> {
        self.refuse_explicit_key_for_slots()?;
        let until = Instant::now().checked_add(bound);
        self.retrying(Wait::No, |lost| {
            self.attempt_any_once(names, command, Wait::No, until, lost)
        })
    }

    /// Each acquisition looks on its own session (see `acquire.rs`).
    fn refuses_pool_and_plain_mix(&self) -> bool {
        true
    }

    fn status(&self, name: &LockName) -> Result<Status> {
        let mut session = Session::open(&self.target, &application_name("status"))?;
        let key = self.key(name);
        let status = self
            .table
            .row(&mut session, key)
            .and_then(|row| self.status_of(&mut session, name.to_string(), key, row));
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

    /// The slots of `base`, from their rows of the state table only:
    /// [`Backend::list`] would ask the server's view of every other lock
    /// too, a round trip or more for each row the table has (`stop NAME`
    /// took 4 s beside 1,000 other names).
    fn slots(&self, base: &LockName) -> Result<Vec<Status>> {
        let mut session = Session::open(&self.target, &application_name("list"))?;
        let prefix = format!("{}@", base.base());
        let slots = self
            .table
            .rows_starting_with(&mut session, &prefix)
            .and_then(|rows| {
                rows.into_iter()
                    .filter(|row| {
                        LockName::from_stored(&row.name).is_some_and(|name| name.is_slot_of(base))
                    })
                    .map(|row| {
                        let (name, key) = (row.name.clone(), row.key);
                        self.status_of(&mut session, name, key, Some(row))
                    })
                    .collect()
            });
        session.close();
        slots
    }

    /// Asks the holder to stop, through the database: its token is marked
    /// in the state row and the request announced on the key's channel
    /// (`NOTIFY`), which the holder's heartbeat listens to (and the row,
    /// read at every heartbeat, is the fallback). Its own supervisor,
    /// wherever it runs, then stops its command (SIGTERM, kill grace,
    /// SIGKILL) and releases the lock cleanly: no lock-delay for the next
    /// holder. With SIGKILL as `signal`, the holder's database session is
    /// ended instead (`pg_terminate_backend`): its heartbeat reports the
    /// loss, its supervisor stops its command, and the next holder waits
    /// the lock-delay. Only a session that the state row names as the
    /// holder is asked or ended; any other holder of the key is refused.
    /// No other signal crosses machines; any but SIGKILL asks.
    fn stop_holder(
        &self,
        name: &LockName,
        signal: i32,
        expected: Option<&HolderId>,
    ) -> Result<Stop> {
        let way = if signal == libc::SIGKILL {
            stop::Way::End
        } else {
            stop::Way::Ask
        };
        let mut session = Session::open(&self.target, &application_name("stop"))?;
        let stopped = match way {
            stop::Way::End => self.end_holder(&mut session, name, expected),
            stop::Way::Ask => self.stop_holder_by(&mut session, name, expected, way),
        };
        session.close();
        stopped
    }

    /// Nothing tells a bystander that an advisory lock was released, and
    /// taking the lock (even shared) to find out would make a real starter
    /// fail: one session checks `pg_locks` every heartbeat interval.
    fn wait_free(&self, name: &LockName, timeout: Option<Duration>) -> Result<bool> {
        let key = self.key(name);
        let mut session = Session::open(&self.target, &application_name("wait"))?;
        let interval = self.config.timing.heartbeat;
        let free = rounds(
            Wait::at_most(timeout),
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

/// The first 8 bytes of SHA-256 over `onlyone/v1/<text>`, big-endian.
fn derive_key(text: &str) -> i64 {
    let digest = Sha256::digest(format!("{KEY_PREFIX}{text}").as_bytes());
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// `(classid, objid)` of a bigint advisory key as `pg_locks` shows them:
/// the high and the low 32 bits, both unsigned.
/// Where the advisory lock `key` of the database at `server` lives:
/// `postgres://host:port/db key K (classid C, objid O)`.
fn key_location(server: &str, key: i64) -> String {
    let (classid, objid) = key_parts(key);
    format!("{server} key {key} (classid {classid}, objid {objid})")
}

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
        let mut zero = PostgresConfig::new("postgres://db1/app");
        zero.timing.heartbeat = Duration::ZERO;
        assert!(PostgresBackend::new(zero).unwrap_err().is_usage());
        // Its idle limit would not fit the server's setting (and a deadline
        // past Instant's range would panic).
        for huge in [MAX_HEARTBEAT + Duration::from_millis(1), Duration::MAX] {
            let mut huge_config = PostgresConfig::new("postgres://db1/app");
            huge_config.timing.heartbeat = huge;
            let huge = huge_config;
            assert!(PostgresBackend::new(huge).unwrap_err().is_usage());
        }
        let mut longest = PostgresConfig::new("postgres://db1/app");
        longest.timing.heartbeat = MAX_HEARTBEAT;
        let limit = PostgresBackend::new(longest).unwrap().idle_limit();
        assert!(limit.as_millis() <= i32::MAX as u128, "{limit:?}");
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
