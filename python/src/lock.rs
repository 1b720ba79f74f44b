//! `NativeLock`: a lock name in a backend, taken once or waited for in a
//! thread of its own (`Waiter`) so that Python keeps running: it can take
//! Ctrl-C, and an event loop keeps turning.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use onlyone::{Attempt, Backend, FileBackend, Holder, Lock, LockName};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors;
use crate::fork;
use crate::guard::NativeGuard;
use crate::values;

/// How long a wait sleeps between looks at Ctrl-C (and, on files, between
/// the library's own waits, each of which also wakes at a release).
const SLICE: Duration = Duration::from_millis(50);

/// How long one MySQL wait in the server (`GET_LOCK` with a timeout) lasts
/// before the waiting thread looks whether it was cancelled: the library
/// has no way to end a MySQL wait from another thread, so a cancelled wait
/// ends (and lets go of what it took) within this much. A release wakes
/// the wait at once all the same.
const MYSQL_SLICE: Duration = Duration::from_secs(1);

/// Which kind of backend a lock lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    Mysql,
}

impl Kind {
    /// A lock in a database server (a session, not a lock file).
    fn database(self) -> bool {
        self != Kind::File
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::File => "files",
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
        }
    }
}

/// A lock name in a backend, as `onlyone.Lock` makes it.
#[pyclass(frozen, module = "onlyone._onlyone")]
pub struct NativeLock {
    lock: Lock,
    kind: Kind,
    location: String,
}

/// What one try gives Python: the guard, or who holds the lock (a dict
/// with the command's conflict message under "message").
type Outcome<'py> = (Option<NativeGuard>, Option<Bound<'py, PyDict>>);

#[pymethods]
impl NativeLock {
    #[new]
    // The keyword arguments of `onlyone.Lock`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (name, dir=None, postgres=None, key=None, table=None, heartbeat=None, command=Vec::new(), mysql=None))]
    fn new(
        py: Python<'_>,
        name: &str,
        dir: Option<PathBuf>,
        postgres: Option<String>,
        key: Option<i64>,
        table: Option<String>,
        heartbeat: Option<f64>,
        command: Vec<String>,
        mysql: Option<String>,
    ) -> PyResult<NativeLock> {
        let name = LockName::new(name).map_err(|err| errors::to_py(py, err))?;
        let place = Place {
            dir,
            postgres,
            mysql,
            key,
            table,
            heartbeat,
        };
        let (backend, kind, location) = backend(py, &name, place)?;
        Ok(NativeLock {
            lock: Lock::with_backend(name, backend).command(command),
            kind,
            location,
        })
    }

    /// The lock's name.
    #[getter]
    fn name(&self) -> String {
        self.lock.name().to_string()
    }

    /// Whether the lock lives in a database server, PostgreSQL or MySQL
    /// (else in lock files): taking it speaks to the server, and may sit
    /// out a lock-delay.
    #[getter]
    fn database(&self) -> bool {
        self.kind.database()
    }

    /// Which backend: "files", "postgres" or "mysql".
    #[getter]
    fn backend(&self) -> &'static str {
        self.kind.as_str()
    }

    /// Where the lock lives: the lock directory, or the server.
    #[getter]
    fn location(&self) -> String {
        self.location.clone()
    }

    /// One try, never waiting for another holder; with `within`, a
    /// lock-delay (a database's) ends once that many seconds have passed.
    #[pyo3(signature = (within=None))]
    fn try_acquire<'py>(&self, py: Python<'py>, within: Option<f64>) -> PyResult<Outcome<'py>> {
        let within = within.map(seconds).transpose()?;
        let lock = self.lock.clone();
        let kind = self.kind;
        let attempt = py.detach(move || {
            fork::tracking_sockets(kind.database(), || match within {
                Some(bound) => lock.try_acquire_within(bound),
                None => lock.try_acquire(),
            })
        });
        outcome(py, &self.lock, self.kind, attempt, None)
    }

    /// Starts waiting for the lock in a thread of its own, at most
    /// `timeout` seconds (`None`: without limit); `said` is the whole
    /// timeout the caller asked for, which a conflict message names. With
    /// `once`, one try instead (whose database lock-delay is waited out in
    /// full), in a thread so that Ctrl-C can end it.
    #[pyo3(signature = (timeout, said=None, once=false))]
    fn start_wait(&self, timeout: Option<f64>, said: Option<f64>, once: bool) -> PyResult<Waiter> {
        let timeout = timeout.map(seconds).transpose()?;
        let said = said.map(seconds).transpose()?.or(timeout);
        let shared = Arc::new(Shared::default());
        let lock = self.lock.clone();
        let kind = self.kind;
        let theirs = shared.clone();
        thread::Builder::new()
            .name("onlyone-wait".to_owned())
            .spawn(move || {
                let attempt = fork::tracking_sockets(kind.database(), || {
                    theirs.cancellable(|| match once {
                        true => lock.try_acquire(),
                        false => wait(&lock, kind, timeout, &theirs.cancelled),
                    })
                });
                theirs.finish(attempt);
            })
            .map_err(|err| pyo3::exceptions::PyOSError::new_err(err.to_string()))?;
        Ok(Waiter {
            shared,
            lock: self.lock.clone(),
            kind: self.kind,
            said,
        })
    }

    /// Whether the lock is held, by whom, and who waits (a dict).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let lock = self.lock.clone();
        let status = py
            .detach(move || lock.status())
            .map_err(|err| errors::to_py(py, err))?;
        values::status(py, &status)
    }
}

/// Whether `name` is held and by whom, without taking it (a dict).
#[pyfunction]
#[pyo3(signature = (name, dir=None, postgres=None, key=None, table=None, mysql=None))]
pub fn status<'py>(
    py: Python<'py>,
    name: &str,
    dir: Option<PathBuf>,
    postgres: Option<String>,
    key: Option<i64>,
    table: Option<String>,
    mysql: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    NativeLock::new(py, name, dir, postgres, key, table, None, Vec::new(), mysql)?.status(py)
}

/// Where a lock lives and how it is held there: the keyword arguments of
/// `onlyone.Lock`.
struct Place {
    dir: Option<PathBuf>,
    postgres: Option<String>,
    mysql: Option<String>,
    key: Option<i64>,
    table: Option<String>,
    heartbeat: Option<f64>,
}

/// The backend the arguments choose, as the command's flags do: lock
/// files with `dir`, PostgreSQL with `postgres`, MySQL/MariaDB with
/// `mysql` (at most one of them); without any, `ONLYONE_POSTGRES_URL` or
/// `ONLYONE_MYSQL_URL` (not both), else the lock files in `ONLYONE_DIR`,
/// else in the per-user default directory.
fn backend(
    py: Python<'_>,
    name: &LockName,
    place: Place,
) -> PyResult<(Arc<dyn Backend>, Kind, String)> {
    let Place {
        dir,
        mut postgres,
        mut mysql,
        key,
        table,
        heartbeat,
    } = place;
    let given: Vec<&str> = [
        (dir.is_some(), "dir= (lock files)"),
        (postgres.is_some(), "postgres= (a PostgreSQL lock)"),
        (mysql.is_some(), "mysql= (a MySQL/MariaDB lock)"),
    ]
    .into_iter()
    .filter_map(|(given, what)| given.then_some(what))
    .collect();
    match given[..] {
        [one, other] => {
            return Err(errors::usage(
                py,
                &format!("give {one} or {other}, not both"),
            ));
        }
        [_, _, _] => {
            return Err(errors::usage(
                py,
                "give one of dir=, postgres= and mysql=, not all three",
            ));
        }
        _ => {}
    }
    if given.is_empty() {
        postgres = std::env::var("ONLYONE_POSTGRES_URL").ok();
        mysql = std::env::var("ONLYONE_MYSQL_URL").ok();
        if postgres.is_some() && mysql.is_some() {
            return Err(errors::usage(
                py,
                "ONLYONE_POSTGRES_URL and ONLYONE_MYSQL_URL name two places for locks: give postgres= or mysql=, or unset one",
            ));
        }
    }
    if let Some(url) = postgres {
        return postgres_backend(py, name, url, key, table, heartbeat);
    }
    if let Some(url) = mysql {
        for (given, what, why) in [
            (
                key.is_some(),
                "key=",
                "a MySQL lock's name in the server is derived from the lock name (see status().location)",
            ),
            (
                table.is_some(),
                "table=",
                "a MySQL lock's state table is onlyone_locks in the URL's database",
            ),
        ] {
            if given {
                return Err(errors::usage(
                    py,
                    &format!("{what} is for a PostgreSQL lock, not with mysql=: {why}"),
                ));
            }
        }
        return mysql_backend(py, name, url, heartbeat);
    }
    for (given, what, needs) in [
        (
            key.is_some(),
            "key=",
            "a PostgreSQL lock: it needs postgres=",
        ),
        (
            table.is_some(),
            "table=",
            "a PostgreSQL lock: it needs postgres=",
        ),
        (
            heartbeat.is_some(),
            "heartbeat=",
            "a database lock: it needs postgres= or mysql=",
        ),
    ] {
        if given {
            return Err(errors::usage(py, &format!("{what} is for {needs}")));
        }
    }
    let dir = dir
        .or_else(|| std::env::var_os("ONLYONE_DIR").map(PathBuf::from))
        .unwrap_or_else(onlyone::default_dir);
    if dir.as_os_str().is_empty() {
        // As the command's --dir: an empty directory is no directory
        // (never the current one, which nobody chose).
        return Err(errors::usage(
            py,
            "the lock directory is empty (in dir= or ONLYONE_DIR); for the default directory, give neither",
        ));
    }
    let backend = FileBackend::new(dir);
    let location = backend.dir().display().to_string();
    Ok((Arc::new(backend), Kind::File, location))
}

#[cfg(feature = "postgres")]
fn postgres_backend(
    py: Python<'_>,
    name: &LockName,
    url: String,
    key: Option<i64>,
    table: Option<String>,
    heartbeat: Option<f64>,
) -> PyResult<(Arc<dyn Backend>, Kind, String)> {
    if url.trim().is_empty() {
        return Err(errors::usage(
            py,
            "the PostgreSQL URL is empty (in postgres= or ONLYONE_POSTGRES_URL); to lock with files, give neither",
        ));
    }
    let mut config = onlyone::PostgresConfig::new(url);
    config.key = key;
    if let Some(table) = table {
        config.table = table;
    }
    if let Some(heartbeat) = heartbeat {
        config.timing.heartbeat = seconds(heartbeat)?;
    }
    let backend = onlyone::PostgresBackend::new(config).map_err(|err| errors::to_py(py, err))?;
    let location = format!("{} key {}", backend.redacted_url(), backend.key(name));
    Ok((Arc::new(backend), Kind::Postgres, location))
}

#[cfg(not(feature = "postgres"))]
fn postgres_backend(
    py: Python<'_>,
    _: &LockName,
    _: String,
    _: Option<i64>,
    _: Option<String>,
    _: Option<f64>,
) -> PyResult<(Arc<dyn Backend>, Kind, String)> {
    Err(errors::usage(
        py,
        "this build of onlyone has no PostgreSQL backend",
    ))
}

#[cfg(feature = "mysql")]
fn mysql_backend(
    py: Python<'_>,
    name: &LockName,
    url: String,
    heartbeat: Option<f64>,
) -> PyResult<(Arc<dyn Backend>, Kind, String)> {
    if url.trim().is_empty() {
        return Err(errors::usage(
            py,
            "the MySQL URL is empty (in mysql= or ONLYONE_MYSQL_URL); to lock with files, give neither",
        ));
    }
    let mut config = onlyone::MysqlConfig::new(url);
    if let Some(heartbeat) = heartbeat {
        config.timing.heartbeat = seconds(heartbeat)?;
    }
    let backend = onlyone::MysqlBackend::new(config).map_err(|err| errors::to_py(py, err))?;
    let location = format!(
        "{} lock '{}'",
        backend.redacted_url(),
        backend.lock_name_for(name)
    );
    Ok((Arc::new(backend), Kind::Mysql, location))
}

#[cfg(not(feature = "mysql"))]
fn mysql_backend(
    py: Python<'_>,
    _: &LockName,
    _: String,
    _: Option<f64>,
) -> PyResult<(Arc<dyn Backend>, Kind, String)> {
    Err(errors::usage(
        py,
        "this build of onlyone has no MySQL backend",
    ))
}

/// A number of seconds from Python as a duration.
fn seconds(value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "a timeout is a number of seconds, 0 or more, not {value}"
        ))
    })
}

/// Waits for `lock` at most `timeout`, until `cancelled`. On files the
/// wait is cut in slices, between which a cancel is seen; a PostgreSQL wait
/// is one wait in the server, which a cancel ends with the session's cancel
/// request (see [`Shared::cancellable`]); a MySQL wait is cut in waits in
/// the server of [`MYSQL_SLICE`] each.
fn wait(
    lock: &Lock,
    kind: Kind,
    timeout: Option<Duration>,
    cancelled: &AtomicBool,
) -> onlyone::Result<Attempt> {
    let started = Instant::now();
    let first = match timeout {
        Some(timeout) => lock.try_acquire_within(timeout)?,
        None => lock.try_acquire()?,
    };
    let holder = match first {
        Attempt::Acquired(guard) => return Ok(Attempt::Acquired(guard)),
        Attempt::Held(holder) => holder,
    };
    let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
    if holder.lock_delay.is_some() || left == Some(Duration::ZERO) {
        return Ok(Attempt::Held(holder));
    }
    let slice_length = match kind {
        Kind::Postgres => return lock.acquire(left),
        Kind::Mysql => MYSQL_SLICE,
        Kind::File => SLICE,
    };
    let deadline = left.and_then(|left| Instant::now().checked_add(left));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let slice = left.map_or(slice_length, |left| left.min(slice_length));
        let mut attempt = lock.acquire(Some(slice))?;
        if let Attempt::Held(Holder {
            lock_delay: Some(delay),
            ..
        }) = attempt
        {
            // The slice took the lock, but the lock-delay after an
            // unclean loss outlasts it: take it again (no other holder
            // waited for) and sit the delay out within the whole wait,
            // or a slice after slice would each start it over.
            let bound = left.unwrap_or(delay.saturating_mul(2).saturating_add(MYSQL_SLICE));
            attempt = lock.try_acquire_within(bound)?;
        }
        let timed_out = left.is_some_and(|left| left <= slice_length);
        if matches!(attempt, Attempt::Acquired(_)) || timed_out || cancelled.load(Ordering::SeqCst)
        {
            return Ok(attempt);
        }
    }
}

/// The outcome of a try or a wait for Python; `waited` is the timeout a
/// conflict message names, `None` after one try.
fn outcome<'py>(
    py: Python<'py>,
    lock: &Lock,
    kind: Kind,
    attempt: onlyone::Result<(Attempt, Vec<u64>)>,
    waited: Option<Duration>,
) -> PyResult<Outcome<'py>> {
    let (attempt, sockets) = attempt.map_err(|err| errors::to_py(py, err))?;
    match attempt {
        Attempt::Acquired(guard) => Ok((
            Some(NativeGuard::new(guard, sockets, kind.database())),
            None,
        )),
        Attempt::Held(holder) => {
            let dict = values::holder(py, &holder)?;
            dict.set_item(
                "message",
                onlyone::cli::conflict_message(lock.name(), &holder, waited),
            )?;
            Ok((None, Some(dict)))
        }
    }
}

/// A wait in a thread of its own.
#[pyclass(frozen, module = "onlyone._onlyone")]
pub struct Waiter {
    shared: Arc<Shared>,
    lock: Lock,
    kind: Kind,
    said: Option<Duration>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<WaitState>,
    changed: Condvar,
    cancelled: AtomicBool,
    /// Ends a PostgreSQL wait or lock-delay under way (a MySQL wait ends
    /// at its next slice).
    #[cfg(feature = "postgres")]
    server: onlyone::internals::Cancel,
}

#[derive(Default)]
struct WaitState {
    result: WaitResult,
    /// The waiting thread has ended, and let go of what it took if the
    /// wait was cancelled.
    ended: bool,
}

#[derive(Default)]
enum WaitResult {
    #[default]
    Waiting,
    Done(Box<onlyone::Result<(Attempt, Vec<u64>)>>),
    Taken,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The waiting thread's result: kept for Python, or let go of (a lock
    /// released) when nobody waits for it any more.
    fn finish(&self, attempt: onlyone::Result<(Attempt, Vec<u64>)>) {
        let mut state = self.state();
        if self.cancelled.load(Ordering::SeqCst) {
            drop(state);
            drop(attempt);
            state = self.state();
        } else {
            state.result = WaitResult::Done(Box::new(attempt));
        }
        state.ended = true;
        drop(state);
        self.changed.notify_all();
    }

    /// Runs `acquire` so that [`Shared::cancel`] ends a PostgreSQL wait or
    /// lock-delay in it.
    fn cancellable<T>(&self, acquire: impl FnOnce() -> T) -> T {
        #[cfg(feature = "postgres")]
        return self.server.run(acquire);
        #[cfg(not(feature = "postgres"))]
        acquire()
    }

    /// Cancels the wait and lets go of what it took; with `join`, returns
    /// only once the thread has ended, so that nothing it takes later is
    /// held even for a moment. A PostgreSQL wait in the server or
    /// lock-delay has ended on return (its session's cancel request).
    fn cancel(&self, join: bool) {
        let mut state = self.state();
        self.cancelled.store(true, Ordering::SeqCst);
        let result = std::mem::replace(&mut state.result, WaitResult::Taken);
        self.changed.notify_all();
        #[cfg(feature = "postgres")]
        {
            drop(state);
            self.server.cancel();
            state = self.state();
        }
        while join && !state.ended {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        drop(result);
    }
}

#[pymethods]
impl Waiter {
    /// Waits at most `timeout` seconds (`None`: until done) for the wait
    /// to end; true when it has. The interpreter is let go meanwhile, and
    /// Ctrl-C is seen within 50 ms: it cancels the wait and raises.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = timeout
            .map(seconds)
            .transpose()?
            .and_then(|t| Instant::now().checked_add(t));
        loop {
            let shared = self.shared.clone();
            let slice = deadline.map_or(SLICE, |d| {
                d.saturating_duration_since(Instant::now()).min(SLICE)
            });
            let done = py.detach(move || {
                let state = shared.state();
                let (state, _) = shared
                    .changed
                    .wait_timeout_while(state, slice, |state| {
                        matches!(state.result, WaitResult::Waiting)
                    })
                    .unwrap_or_else(|e| e.into_inner());
                !matches!(state.result, WaitResult::Waiting)
            });
            if done {
                return Ok(true);
            }
            if let Err(err) = py.check_signals() {
                self.cancel(py);
                return Err(err);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// The result once [`Waiter::wait`] says the wait ended: the guard, or
    /// who holds the lock; (None, None) when cancelled.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Outcome<'py>> {
        let mut state = self.shared.state();
        match std::mem::replace(&mut state.result, WaitResult::Taken) {
            WaitResult::Done(attempt) => {
                drop(state);
                outcome(py, &self.lock, self.kind, *attempt, self.said)
            }
            other => {
                state.result = other;
                Ok((None, None))
            }
        }
    }

    /// Stops waiting: what the wait takes from now on is released at once.
    /// A wait on files has ended on return (within 50 ms); a PostgreSQL
    /// wait in the server or lock-delay has been ended (a wait still
    /// connecting ends in its own thread); a MySQL wait ends in its own
    /// thread within [`MYSQL_SLICE`] (a lock-delay: at its end).
    fn cancel(&self, py: Python<'_>) {
        let shared = self.shared.clone();
        let join = self.kind == Kind::File;
        py.detach(move || shared.cancel(join));
    }
}
